//! Pod addresses from the node's podCIDR, in the manner of CNI's host-local plugin: one file
//! per address taken, named by the address and holding the pod's uid and, on a second line,
//! its veth, so an agent restart finds every pod's address again and never hands one out
//! twice.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::cidr::Cidr;

/// The addresses of one podCIDR.
pub struct Ipam {
    dir: PathBuf,
    range: Cidr,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_uid: HashMap<String, Ipv4Addr>,
    taken: BTreeMap<Ipv4Addr, String>,
    /// The veth of each holder whose record names one.
    links: HashMap<String, String>,
    /// The offset handed out last: the next search starts after it, so a freed address is not
    /// reused at once.
    last: u64,
}

impl Ipam {
    /// Opens (or makes) the address records of `range` under `dir`.
    ///
    /// # Errors
    /// When the directory cannot be made or read.
    pub fn open(dir: PathBuf, range: Cidr) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    // A hand-over cut short by a crash.
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            };
            let record = std::fs::read_to_string(entry.path())?;
            let mut lines = record.lines().map(str::trim);
            let uid = lines.next().unwrap_or_default().to_owned();
            if !range.contains(ip) || uid.is_empty() {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(link) = lines.next().filter(|l| !l.is_empty()) {
                state.links.insert(uid.clone(), link.to_owned());
            }
            state.by_uid.insert(uid.clone(), ip);
            state.taken.insert(ip, uid);
        }
        Ok(Self {
            dir,
            range,
            state: Mutex::new(state),
        })
    }

    /// The range's gateway: its first host address, kept for the node's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.range.host(1).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// How many pods can have an address.
    pub fn capacity(&self) -> u64 {
        self.range.pod_addresses()
    }

    /// The address of pod `uid`, taken now if it has none; `true` when it was taken now.
    ///
    /// # Errors
    /// When the range is full, or the record cannot be written.
    pub fn assign(&self, uid: &str) -> io::Result<(Ipv4Addr, bool)> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if let Some(ip) = state.by_uid.get(uid) {
            return Ok((*ip, false));
        }
        // Offsets 2 ..= size-2: not the network, the gateway or the broadcast address.
        let (first, last) = (2, self.range.size().saturating_sub(2));
        let count = last.saturating_sub(first) + 1;
        // Where the last search stopped (just before the first address on a fresh start).
        let from = state.last.checked_sub(first).unwrap_or(count - 1);
        for step in 1..=count {
            let offset = first + (from + step) % count;
            let Some(ip) = self.range.host(offset) else {
                continue;
            };
            if state.taken.contains_key(&ip) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            let mut file = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            file.write_all(format!("{uid}\n{}\n", super::veth_name(uid)).as_bytes())?;
            state.last = offset;
            state.by_uid.insert(uid.to_owned(), ip);
            state.taken.insert(ip, uid.to_owned());
            return Ok((ip, true));
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no free address left in the node's podCIDR {}", self.range),
        ))
    }

    /// Gives `from`'s address (and its veth) to `to`.
    ///
    /// # Errors
    /// When `from` holds no address, `to` holds one already, or the record cannot be written.
    pub fn hand_over(&self, from: &str, to: &str) -> io::Result<Ipv4Addr> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if state.by_uid.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} holds an address already"),
            ));
        }
        let ip = *state.by_uid.get(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{from} holds no address"))
        })?;
        let link = state
            .links
            .get(from)
            .cloned()
            .unwrap_or_else(|| super::veth_name(from));
        // Written aside and renamed over, so a crash leaves one holder or the other.
        let path = self.dir.join(ip.to_string());
        let aside = self.dir.join(format!(".{ip}"));
        std::fs::write(&aside, format!("{to}\n{link}\n"))?;
        std::fs::rename(&aside, &path)?;
        state.by_uid.remove(from);
        state.links.remove(from);
        state.by_uid.insert(to.to_owned(), ip);
        state.taken.insert(ip, to.to_owned());
        state.links.insert(to.to_owned(), link);
        Ok(ip)
    }

    /// The name of `uid`'s host-side veth.
    pub fn link(&self, uid: &str) -> String {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.links.get(uid).cloned())
            .unwrap_or_else(|| super::veth_name(uid))
    }

    /// Gives back pod `uid`'s address, if it had one.
    pub fn release(&self, uid: &str) -> Option<Ipv4Addr> {
        let mut state = self.state.lock().ok()?;
        let ip = state.by_uid.remove(uid)?;
        state.links.remove(uid);
        state.taken.remove(&ip);
        let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
        Some(ip)
    }

    /// The uids that hold an address.
    pub fn holders(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.by_uid.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_persistent_and_not_reused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let range: Cidr = "100.64.7.0/29".parse().unwrap();
        let ipam = Ipam::open(dir.path().into(), range).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(100, 64, 7, 1));
        assert_eq!(ipam.capacity(), 5);
        let (a, fresh) = ipam.assign("a").unwrap();
        assert!(fresh);
        assert_eq!(a, Ipv4Addr::new(100, 64, 7, 2));
        assert_eq!(
            ipam.assign("a").unwrap(),
            (a, false),
            "the same pod keeps its address"
        );
        let (b, _) = ipam.assign("b").unwrap();
        assert_eq!(b, Ipv4Addr::new(100, 64, 7, 3));
        assert_eq!(ipam.release("a"), Some(a));
        let (c, _) = ipam.assign("c").unwrap();
        assert_eq!(
            c,
            Ipv4Addr::new(100, 64, 7, 4),
            "a freed address waits its turn"
        );

        // A restart finds every holder again.
        drop(ipam);
        let ipam = Ipam::open(dir.path().into(), range).unwrap();
        let mut holders = ipam.holders();
        holders.sort();
        assert_eq!(holders, ["b", "c"]);
        assert_eq!(ipam.assign("b").unwrap(), (b, false));
        for uid in ["d", "e", "f"] {
            let (ip, _) = ipam.assign(uid).unwrap();
            assert!(
                range.contains(ip) && ip != ipam.gateway() && ip.octets()[3] < 7,
                "{ip}"
            );
        }
        let full = ipam.assign("g").unwrap_err();
        assert!(full.to_string().contains("100.64.7.0/29"), "{full}");
    }

    #[test]
    fn a_handed_over_address_keeps_its_veth_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let range: Cidr = "100.64.8.0/29".parse().unwrap();
        let ipam = Ipam::open(dir.path().into(), range).unwrap();
        let (ip, _) = ipam.assign("spare-1").unwrap();
        let veth = super::super::veth_name("spare-1");
        assert_eq!(ipam.link("spare-1"), veth);
        assert_eq!(ipam.hand_over("spare-1", "pod-a").unwrap(), ip);
        assert_eq!(ipam.link("pod-a"), veth, "the pod keeps the spare's veth");
        assert_eq!(ipam.assign("pod-a").unwrap(), (ip, false));
        assert!(ipam.hand_over("spare-1", "pod-b").is_err(), "given once");
        let (other, _) = ipam.assign("spare-2").unwrap();
        let taken = ipam.hand_over("spare-2", "pod-a").unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AlreadyExists);

        drop(ipam);
        let ipam = Ipam::open(dir.path().into(), range).unwrap();
        assert_eq!(ipam.assign("pod-a").unwrap(), (ip, false));
        assert_eq!(ipam.link("pod-a"), veth);
        assert_eq!(ipam.assign("spare-2").unwrap(), (other, false));
        assert_eq!(ipam.release("pod-a"), Some(ip));
        assert_eq!(ipam.link("pod-a"), super::super::veth_name("pod-a"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only spare-2's record is left"
        );
    }
}
