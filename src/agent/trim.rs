//! Gives back memory an agent holds for nothing: the pages of the `wk` binary that only
//! start-up needed, the stale stack pages a pod thread may inherit, and the freed heap a
//! compile leaves.
//!
//! The binary: starting touches much code that an idle node never runs again (flag parsing,
//! TLS set-up, the Wasm engine's making), and the kernel maps code 64 KB at a time, so an idle
//! agent would keep most of its binary's text mapped. Unmapping the read-only, never-written
//! mappings of the executable leaves the page cache alone: code runs on as before, and what an
//! idle agent still runs comes back at a minor fault. What start-up alone ran then stays out of
//! the agent's RSS, and the kernel may reclaim it.

use std::path::Path;

/// One mapping of `/proc/self/smaps`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    rss_kb: usize,
    /// Pages of the mapping copied from its file on write (relocated, or written): the
    /// process's own. (Private_Dirty also counts page-cache pages not yet written back.)
    anonymous_kb: usize,
}

fn parse(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or_default();
            // offset, device, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                writable: perms.contains('w'),
                path,
                ..Mapping::default()
            });
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        let kb = fields
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        match first {
            "Rss:" => m.rss_kb = kb,
            "Anonymous:" => m.anonymous_kb = kb,
            _ => {}
        }
    }
    out
}

/// The read-only mappings of `exe` that hold no page of the process's own.
fn releasable<'a>(exe: &Path, maps: &'a [Mapping]) -> impl Iterator<Item = &'a Mapping> {
    let exe = exe.to_string_lossy().into_owned();
    maps.iter()
        .filter(move |m| m.path == exe && !m.writable && m.anonymous_kb == 0 && m.end > m.start)
}

/// Unmaps the [`releasable`] mappings; returns how many resident bytes they had.
fn release(exe: &Path, smaps: &str) -> usize {
    let maps = parse(smaps);
    let mut released = 0;
    for m in releasable(exe, &maps) {
        // SAFETY: the range is a whole mapping of the executable that is not writable and
        // holds no anonymous page (nothing relocated or copied on write), so every page is the
        // page cache's. MADV_DONTNEED on a private file mapping drops the page-table entries
        // only; the next access reads the same bytes from the page cache, as after reclaim.
        let done = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if done == 0 {
            released += m.rss_kb * 1024;
        }
    }
    released
}

/// Gives back this process's resident pages of its own executable's code and read-only data;
/// returns how many bytes were resident.
pub fn release_executable_pages() -> usize {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return 0;
    };
    release(&exe, &smaps)
}

/// Gives back the heap's free pages to the kernel. Compiling a big module frees most of what
/// it allocated (Cranelift's per-function data, on every compiling thread), but glibc keeps
/// freed memory in its arenas for reuse: after a 13 MB component, hundreds of MB that an
/// edge node would otherwise hold until the agent ends. Elsewhere (musl) it does nothing.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back the resident pages of the calling thread's stack below its current frame. A new
/// thread may be given a stack glibc cached from a thread that exited (a 2 MB one of tokio's
/// blocking pool, say) with that thread's pages still resident; a pod thread lives as long as
/// its pod and would keep them for nothing.
pub fn release_unused_stack() {
    /// Left alone below this frame: room for the calls below (madvise's own included).
    const MARGIN: usize = 16 << 10;
    const PAGE: usize = 4 << 10;
    // SAFETY: all-zero is a valid pthread_attr_t to be filled; pthread_getattr_np initialises
    // it for the calling thread, and it is destroyed once read.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
        return;
    }
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: attr was initialised above; the out-pointers are to locals.
    let got = unsafe { libc::pthread_attr_getstack(&attr, &mut low, &mut size) };
    // SAFETY: attr was initialised above and is not used again.
    unsafe { libc::pthread_attr_destroy(&mut attr) };
    let here = std::ptr::addr_of!(size) as usize;
    let (low, high) = (low as usize, low as usize + size);
    if got != 0 || !(low..high).contains(&here) {
        return;
    }
    let start = low.next_multiple_of(PAGE);
    let end = here.saturating_sub(MARGIN) & !(PAGE - 1);
    if end > start {
        // SAFETY: [start, end) is within this thread's own stack, below every live frame
        // (the stack grows down from `high`, and this frame is above `end` by MARGIN), so no
        // live data is there; MADV_DONTNEED on private anonymous memory makes those pages
        // read as zeros when next touched, as a fresh stack would.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5581c0000000-5581c0939000 r--p 00000000 fd:01 1234 /opt/wk bin/wk
Rss:                3620 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
5581c0a3a000-5581c2633000 r-xp 0093a000 fd:01 1234 /opt/wk bin/wk
Rss:               14052 kB
Private_Dirty:       120 kB
Anonymous:             0 kB
5581c2634000-5581c2736000 r--p 02532000 fd:01 1234 /opt/wk bin/wk
Rss:                1032 kB
Private_Dirty:      1032 kB
Anonymous:          1032 kB
5581c2736000-5581c2740000 rw-p 02632000 fd:01 1234 /opt/wk bin/wk
Rss:                  40 kB
Private_Dirty:        40 kB
7f00000000-7f00001000 rw-p 00000000 00:00 0 
Rss:                   4 kB
";

    #[test]
    fn only_read_only_mappings_of_the_binary_without_copies_qualify() {
        let maps = parse(SMAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].path, "/opt/wk bin/wk");
        assert_eq!((maps[1].rss_kb, maps[1].anonymous_kb), (14052, 0));
        let chosen: Vec<usize> = releasable(Path::new("/opt/wk bin/wk"), &maps)
            .map(|m| m.rss_kb)
            .collect();
        assert_eq!(
            chosen,
            [3620, 14052],
            "not the relocated data, the writable data or anything else"
        );
        assert_eq!(releasable(Path::new("/opt/wk"), &maps).count(), 0);
    }

    /// Uses about `depth` KB of stack; returns a value that depends on all of it.
    #[inline(never)]
    fn deep(depth: usize) -> u64 {
        let mut block = [0u8; 1024];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i + depth) as u8;
        }
        let below = if depth > 1 { deep(depth - 1) } else { 0 };
        std::hint::black_box(&block)
            .iter()
            .map(|b| u64::from(*b))
            .sum::<u64>()
            + below
    }

    #[test]
    fn a_thread_gives_back_the_stack_below_its_frame_and_can_use_it_again() {
        fn stack_rss_kb(at: usize) -> usize {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            parse(&smaps)
                .into_iter()
                .find(|m| (m.start..m.end).contains(&at))
                .map(|m| m.rss_kb)
                .unwrap()
        }
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let local = 0u8;
                let at = std::ptr::addr_of!(local) as usize;
                let first = deep(1000);
                let used = stack_rss_kb(at);
                assert!(used >= 1000, "the deep calls touched {used} KB");
                release_unused_stack();
                let after = stack_rss_kb(at);
                assert!(after < 100, "{used} KB -> {after} KB");
                assert_eq!(deep(1000), first, "the stack works as before");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Whether this is the copy of the test binary running only `test`; else runs that copy,
    /// asserts that the test passed there, and returns false. Other tests' threads fault
    /// pages in and out while a test measures the process's memory, so such a test runs alone.
    fn alone(test: &str) -> bool {
        if std::env::var_os("WK_TRIM_ALONE").is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("agent::trim::tests::{test}"),
                "--test-threads=1",
                "--nocapture",
            ])
            .env("WK_TRIM_ALONE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    #[test]
    fn freed_heap_goes_back_to_the_kernel() {
        if !alone("freed_heap_goes_back_to_the_kernel") {
            return;
        }
        fn heap_kb() -> usize {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap()
        }
        // As a compile leaves it: many small blocks on a thread of its own (glibc gives it an
        // arena of its own), most freed, a few kept, so the free memory lies between live
        // blocks where free() alone does not give it back.
        let kept = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..100_000).map(|i| vec![i as u8; 2000]).collect();
            blocks.into_iter().step_by(64).collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        let before = heap_kb();
        release_free_heap();
        let after = heap_kb();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(
            after + 100_000 < before,
            "{before} kB anonymous before, {after} kB after"
        );
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, b)| b[0] == (i * 64) as u8 && b.len() == 2000)
        );
    }

    #[test]
    fn releasing_keeps_the_code_running_and_lowers_the_rss() {
        if !alone("releasing_keeps_the_code_running_and_lowers_the_rss") {
            return;
        }
        fn resident_kb() -> usize {
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let maps = parse(&std::fs::read_to_string("/proc/self/smaps").unwrap());
            releasable(&exe, &maps).map(|m| m.rss_kb).sum()
        }
        // Touch plenty of code first.
        let text = format!("{:?}", parse(SMAPS));
        let released = release_executable_pages() / 1024;
        assert!(released > 0, "nothing of the test binary was resident?");
        let after = resident_kb();
        assert!(
            after < released / 2,
            "{released} kB released, {after} kB resident right after"
        );
        // Code and read-only data fault back in as they are used.
        assert_eq!(format!("{:?}", parse(SMAPS)), text);
        assert_eq!(parse(SMAPS).len(), 5);
    }
}
