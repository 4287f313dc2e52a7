//! The time the control plane reads: the API server's timestamps and the controllers' clocks.
//!
//! In a build for production this is the system clock. In the crate's unit tests it is the
//! system clock at the first reading, moved on by tokio's clock, so that a test on a paused
//! clock (`#[tokio::test(start_paused = true)]`) moves the controllers' timestamps exactly as
//! far as it moves their timers: a minute of CronJob schedule or a node's grace period passes
//! in no real time.

/// The current time.
pub fn now() -> jiff::Timestamp {
    #[cfg(not(test))]
    {
        jiff::Timestamp::now()
    }
    #[cfg(test)]
    {
        tokio_now()
    }
}

/// The system clock at the first reading plus how far tokio's clock has moved since then.
#[cfg(test)]
fn tokio_now() -> jiff::Timestamp {
    static ORIGIN: std::sync::OnceLock<(jiff::Timestamp, std::time::Instant)> =
        std::sync::OnceLock::new();
    let (wall, instant) =
        *ORIGIN.get_or_init(|| (jiff::Timestamp::now(), std::time::Instant::now()));
    let now = tokio::time::Instant::now().into_std();
    // A runtime made before the origin was read starts its clock earlier: count backwards.
    let moved = match now.checked_duration_since(instant) {
        Some(d) => jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX),
        None => -jiff::SignedDuration::try_from(instant - now).unwrap_or(jiff::SignedDuration::MAX),
    };
    wall.saturating_add(moved).unwrap_or(wall)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_the_time() {
        let before = super::now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let moved = super::now().duration_since(before);
        assert!(
            moved >= jiff::SignedDuration::from_secs(3600)
                && moved < jiff::SignedDuration::from_secs(3601),
            "{moved:?}"
        );
    }
}
