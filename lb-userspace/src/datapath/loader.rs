//! Loading the BPF object with its maps pinned (reusing pins left by an
//! earlier run), and attaching the programs to interfaces with tcx and XDP
//! links that are pinned too (`<pin dir>/links/`): a crashed agent leaves
//! the datapath running, and the next start swaps its programs into the same
//! links atomically (`BPF_LINK_UPDATE`), so there is no moment without one.
//! A graceful stop detaches (unpins) them, unless told to keep them for an
//! upgrade.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap as BpfHashMap,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use lb_common::{InterfaceStatus, PodSource, interface_role, map_names, program_names, xdp_mode};
use tracing::{debug, info, warn};

use crate::datapath::capacity::Capacity;
use crate::datapath::driver;
use crate::datapath::layout;
use crate::datapath::pod_sources::PodSources;
use crate::datapath::socket_pods::PodAddresses;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const OBJECT_FILE: &str = "switchyard.bpf.o";

/// Finds the BPF object: the explicit path, `$SWITCHYARD_BPF_OBJECT`, next to
/// the binary, or the installed location.
pub fn find_object(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("SWITCHYARD_BPF_OBJECT") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(OBJECT_FILE));
    }
    candidates.push(PathBuf::from("/usr/lib/switchyard").join(OBJECT_FILE));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "BPF object not found (looked at {candidates:?}); build it with `cargo xtask build` or pass --bpf-object"
            )
        })
}

/// Fails clearly unless `dir`'s parent file system is bpffs: pinning on any
/// other file system fails with an obscure error.
pub fn ensure_pin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    if !is_bpffs(dir)? {
        bail!(
            "{} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf`",
            dir.display()
        );
    }
    Ok(())
}

fn is_bpffs(dir: &Path) -> Result<bool> {
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statfs {}", dir.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a BPF file system at `dir` unless it already is one.
pub fn mount_bpffs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if is_bpffs(dir)? {
        info!(path = %dir.display(), "bpffs already mounted");
        return Ok(());
    }
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("mounting bpffs at {}", dir.display()));
    }
    info!(path = %dir.display(), "bpffs mounted");
    Ok(())
}

/// What an interface is to the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The host side of a pod's interface.
    Pod,
    /// The node's interface to the outside (node IPs, NodePort traffic).
    External,
    /// An overlay's tunnel device: other nodes' pods reach node ports and
    /// get replies through it, decapsulated, so it runs the external
    /// interface's tc programs (not XDP: no driver, and the outer packet
    /// is not ours).
    Tunnel,
}

impl Role {
    /// (ingress program, egress program).
    fn programs(self) -> (&'static str, &'static str) {
        match self {
            Role::Pod => (program_names::FROM_POD, program_names::TO_POD),
            Role::External | Role::Tunnel => (program_names::FROM_WORLD, program_names::TO_WORLD),
        }
    }
}

/// Whether and how XDP runs on external interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    /// None on drivers where tc was measured faster (`driver.rs`); else
    /// native (driver) mode where the driver supports it, generic otherwise.
    Auto,
    Native,
    Generic,
    /// tc only.
    Off,
}

/// A link this agent holds, pinned at `path`.
struct HeldLink {
    path: PathBuf,
    link: FdLink,
}

impl HeldLink {
    /// Unpins and closes: the program leaves the hook.
    fn release(self) -> std::io::Result<()> {
        let removed = std::fs::remove_file(&self.path);
        drop(self.link);
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

struct Attachment {
    ifindex: u32,
    role: Role,
    links: Vec<HeldLink>,
}

pub struct Datapath {
    ebpf: Ebpf,
    attached: BTreeMap<String, Attachment>,
    xdp: XdpChoice,
    links_dir: PathBuf,
    /// The socket hooks' links, when socket LB is on.
    socket_links: Vec<HeldLink>,
    /// Pods' own addresses for the source checks; `None`: checks off.
    pod_sources: Option<PodSources>,
}

/// `<links dir>/<iface>_<ifindex>_<hook>`: the ifindex tells a recreated
/// interface of the same name from the old one. bpffs refuses names with a
/// dot (VLAN interfaces have one): those become `+`.
fn link_pin(dir: &Path, iface: &str, ifindex: u32, hook: &str) -> PathBuf {
    dir.join(format!("{}_{ifindex}_{hook}", iface.replace('.', "+")))
}

/// The link pinned at `path` by an earlier run, if any.
/// Unpins and closes the link an earlier run left at `path`, if any.
fn release_pinned(path: &Path) {
    if let Some(old) = pinned_link(path) {
        let _ = HeldLink {
            path: path.to_path_buf(),
            link: old,
        }
        .release();
    }
}

/// How the log and `inspect interfaces` name an `xdp_mode`.
pub fn xdp_mode_name(mode: u8) -> &'static str {
    match mode {
        xdp_mode::NATIVE => "native",
        xdp_mode::GENERIC => "generic",
        xdp_mode::TC_FASTER => "none (auto: tc is faster on this driver)",
        _ => "none",
    }
}

fn pinned_link(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(p) => Some(FdLink::from(p)),
        Err(e) => {
            warn!(pin = %path.display(), "unusable link pin, replacing it: {e}");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let name = program_names::XDP_WORLD;
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not XDP"))
}

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup sock_addr program"))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tc classifier"))
}

impl Datapath {
    /// Loads the object, creating (sized by `capacity`) or reusing the
    /// pinned maps.
    pub fn load(
        object: &Path,
        pin_dir: &Path,
        xdp: XdpChoice,
        capacity: &Capacity,
    ) -> Result<Self> {
        ensure_pin_dir(pin_dir)?;
        layout::unpin_incompatible(pin_dir, &layout::expected_shapes(object)?)?;
        let mut loader = EbpfLoader::new();
        capacity.configure(&mut loader);
        for name in map_names::ALL {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader
            .load_file(object)
            .with_context(|| format!("loading BPF object {}", object.display()))?;
        layout::record_version(&mut ebpf)?;
        for name in [
            program_names::FROM_POD,
            program_names::TO_POD,
            program_names::FROM_WORLD,
            program_names::TO_WORLD,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        xdp_program(&mut ebpf)?
            .load()
            .context("loading the XDP program into the kernel")?;
        for name in program_names::SOCKET_HOOKS {
            socket_program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        info!(object = %object.display(), pin_dir = %pin_dir.display(), "datapath loaded");
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        Ok(Self {
            ebpf,
            attached: BTreeMap::new(),
            xdp,
            links_dir,
            socket_links: Vec::new(),
            pod_sources: Some(PodSources::default()),
        })
    }

    /// Socket-level load balancing: the socket hooks on `cgroup` (normally
    /// the cgroup v2 root, so every process), translating sockets of this
    /// network namespace and, with `pods`, of the pods in `sock_pods`.
    pub fn attach_socket_lb(&mut self, cgroup: &Path, pods: bool) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let cookie = super::pod_netns::own_cookie().context("reading the netns cookie")?;
        {
            let map = self
                .ebpf
                .map_mut(map_names::SOCK_CONFIG)
                .context("sock_config map missing from the BPF object")?;
            let mut config: aya::maps::Array<&mut aya::maps::MapData, u64> =
                aya::maps::Array::try_from(map)?;
            config.set(0, cookie, 0).context("writing sock_config")?;
            config
                .set(1, u64::from(pods), 0)
                .context("writing sock_config")?;
        }
        for name in program_names::SOCKET_HOOKS {
            let path = self.links_dir.join(format!("cgroup_{name}"));
            let program = socket_program(&mut self.ebpf, name)?;
            // Link-based cgroup attachments always coexist (the "single"
            // mode is the link's flags = 0): the new one is attached before
            // an earlier run's is released, so none is missing.
            let id = program
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            let link = FdLink::try_from(program.take_link(id)?)?;
            match std::fs::remove_file(&path) {
                Ok(()) => debug!(pin = %path.display(), "released the previous run's socket hook"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(pin = %path.display(), "removing the previous socket hook: {e}"),
            }
            let pinned = link
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
            self.socket_links.push(HeldLink {
                path,
                link: pinned.into(),
            });
        }
        info!(cgroup = %cgroup.display(), netns_cookie = cookie, "socket load balancing attached");
        Ok(())
    }

    /// Removes what an earlier run left and this one did not take over:
    /// links of interfaces that are gone or no longer selected, and their
    /// status entries. Called after the first attachment pass.
    pub fn release_stale(&mut self) {
        let held: std::collections::BTreeSet<PathBuf> = self
            .attached
            .values()
            .flat_map(|a| a.links.iter())
            .chain(self.socket_links.iter())
            .map(|l| l.path.clone())
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.links_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !held.contains(&path) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => info!(pin = %path.display(), "released a stale link"),
                        Err(e) => warn!(pin = %path.display(), "releasing a stale link: {e}"),
                    }
                }
            }
        }
        let ours: std::collections::BTreeSet<u32> =
            self.attached.values().map(|a| a.ifindex).collect();
        if let Ok(mut status) = self.status_map() {
            let stale: Vec<u32> = status
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| !ours.contains(k))
                .collect();
            for k in stale {
                let _ = status.remove(&k);
            }
        }
    }

    /// Turns the pods' source-address checks off (`--pod-source-check off`):
    /// the addresses are removed, so no interface is checked.
    pub fn disable_source_checks(&mut self) -> Result<()> {
        if self.pod_sources.take().is_some() {
            let map = self
                .ebpf
                .map_mut(map_names::POD_SOURCES)
                .context("pod_sources map missing from the BPF object")?;
            let mut map: BpfHashMap<_, PodSource, u8> = BpfHashMap::try_from(map)?;
            let keys: Vec<PodSource> = map.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = map.remove(&k);
            }
        }
        Ok(())
    }

    /// For each attached pod interface, the addresses the node's host
    /// routes (`routes`, by interface name) send through it.
    pub fn pod_addresses(&self, routes: &BTreeMap<String, BTreeSet<Ipv4Addr>>) -> PodAddresses {
        self.attached
            .iter()
            .filter(|(_, a)| a.role == Role::Pod)
            .filter_map(|(name, a)| Some((a.ifindex, routes.get(name)?.clone())))
            .collect()
    }

    /// Records the addresses each pod interface's pod may send from.
    pub fn update_pod_sources(&mut self, wanted: PodAddresses) -> Result<()> {
        let Some(mut known) = self.pod_sources.take() else {
            return Ok(());
        };
        let result = self
            .ebpf
            .map_mut(map_names::POD_SOURCES)
            .context("pod_sources map missing from the BPF object")
            .and_then(|map| Ok(BpfHashMap::try_from(map)?))
            .and_then(|mut map| known.sync(&mut map, wanted));
        self.pod_sources = Some(known);
        result
    }

    fn status_map(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, InterfaceStatus>> {
        let map = self
            .ebpf
            .map_mut(map_names::INTERFACES)
            .context("interfaces map missing from the BPF object")?;
        Ok(BpfHashMap::try_from(map)?)
    }

    fn record(&mut self, iface: &str, ifindex: u32, role: Role, mode: u8) {
        let mut status = InterfaceStatus {
            role: match role {
                Role::Pod => interface_role::POD,
                Role::External => interface_role::EXTERNAL,
                Role::Tunnel => interface_role::TUNNEL,
            },
            xdp_mode: mode,
            ..Default::default()
        };
        let n = iface.len().min(status.name.len() - 1);
        status.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
        if let Err(e) = self
            .status_map()
            .and_then(|mut m| m.insert(ifindex, status, 0).map_err(Into::into))
        {
            warn!(iface, "recording the attachment: {e:#}");
        }
    }

    /// XDP on an external interface, as `self.xdp` asks: the link (None:
    /// tc alone) and the mode it runs in, or why there is none.
    fn attach_xdp(&mut self, iface: &str, ifindex: u32) -> (Option<HeldLink>, u8) {
        let path = link_pin(&self.links_dir, iface, ifindex, "xdp");
        let attempts = match self.xdp_attempts(iface) {
            Ok(attempts) => attempts,
            Err(mode) => {
                release_pinned(&path);
                return (None, mode);
            }
        };
        if let Some(link) = self.take_over_xdp(iface, ifindex, &path) {
            return link;
        }
        for (mode, code) in attempts {
            let result = xdp_program(&mut self.ebpf).and_then(|p| {
                let id = p.attach(iface, *mode)?;
                Ok(FdLink::try_from(p.take_link(id)?)?)
            });
            match result {
                Ok(link) => match link.pin(&path) {
                    Ok(pinned) => {
                        let link = HeldLink {
                            path,
                            link: pinned.into(),
                        };
                        return (Some(link), *code);
                    }
                    Err(e) => {
                        warn!(iface, "pinning the XDP link: {e}");
                        return (None, xdp_mode::NONE);
                    }
                },
                Err(e) => warn!(iface, ?mode, "XDP attach refused: {e:#}"),
            }
        }
        warn!(
            iface,
            "XDP unavailable here; external traffic takes the tc path"
        );
        (None, xdp_mode::NONE)
    }

    /// The XDP modes to try on `iface`, in order, or the mode to record
    /// when XDP stays off: `--xdp off`, or `auto` on a driver where tc was
    /// measured faster.
    fn xdp_attempts(&self, iface: &str) -> Result<&'static [(XdpMode, u8)], u8> {
        match self.xdp {
            XdpChoice::Off => Err(xdp_mode::NONE),
            XdpChoice::Native => Ok(&[(XdpMode::Driver, xdp_mode::NATIVE)]),
            XdpChoice::Generic => Ok(&[(XdpMode::Skb, xdp_mode::GENERIC)]),
            XdpChoice::Auto => match driver::tc_faster_than_xdp(iface) {
                Some(driver) => {
                    info!(
                        iface,
                        driver, "--xdp auto: no XDP, tc is faster on this driver"
                    );
                    Err(xdp_mode::TC_FASTER)
                }
                None => Ok(&[
                    (XdpMode::Driver, xdp_mode::NATIVE),
                    (XdpMode::Skb, xdp_mode::GENERIC),
                ]),
            },
        }
    }

    /// The XDP link an earlier run pinned, given the new program (an
    /// atomic swap); the mode stays what the link was made with.
    fn take_over_xdp(
        &mut self,
        iface: &str,
        ifindex: u32,
        path: &Path,
    ) -> Option<(Option<HeldLink>, u8)> {
        let old = pinned_link(path)?;
        let mode = self
            .status_map()
            .ok()
            .and_then(|m| m.get(&ifindex, 0).ok())
            .map_or(xdp_mode::GENERIC, |s| s.xdp_mode);
        let updated = xdp_program(&mut self.ebpf).and_then(|p| {
            let link = XdpLink::try_from(old)?;
            let id = p.attach_to_link(link)?;
            Ok(FdLink::try_from(p.take_link(id)?)?)
        });
        match updated {
            Ok(link) => {
                let link = HeldLink {
                    path: path.to_path_buf(),
                    link,
                };
                Some((Some(link), mode))
            }
            Err(e) => {
                warn!(
                    iface,
                    "taking over the XDP link failed, attaching anew: {e:#}"
                );
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// The raw fd of a loaded program, for `BPF_PROG_TEST_RUN` in tests and
    /// benchmarks.
    pub fn program_fd(&mut self, name: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        if name == program_names::XDP_WORLD {
            return Ok(xdp_program(&mut self.ebpf)?.fd()?.as_fd().as_raw_fd());
        }
        Ok(classifier(&mut self.ebpf, name)?.fd()?.as_fd().as_raw_fd())
    }

    /// (name, ifindex, role) of every interface the programs are on.
    pub fn attached(&self) -> impl Iterator<Item = (&str, u32, Role)> {
        self.attached
            .iter()
            .map(|(n, a)| (n.as_str(), a.ifindex, a.role))
    }

    /// One tc hook: takes over the link an earlier run pinned (atomic
    /// program swap), or attaches and pins a new one.
    fn attach_tc(
        &mut self,
        iface: &str,
        ifindex: u32,
        program: &str,
        hook: TcAttachType,
    ) -> Result<HeldLink> {
        let name = match hook {
            TcAttachType::Ingress => "ingress",
            _ => "egress",
        };
        let path = link_pin(&self.links_dir, iface, ifindex, name);
        let prog = classifier(&mut self.ebpf, program)?;
        if let Some(old) = pinned_link(&path) {
            let swapped = (|| -> Result<FdLink> {
                let link = SchedClassifierLink::try_from(old)?;
                let id = prog.attach_to_link(link)?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            })();
            match swapped {
                Ok(link) => {
                    debug!(iface, program, "took over the pinned link");
                    return Ok(HeldLink { path, link });
                }
                Err(e) => {
                    warn!(
                        iface,
                        program, "taking over the pinned link failed, attaching anew: {e:#}"
                    );
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = prog
            .attach(iface, hook)
            .with_context(|| format!("attaching {program} to {iface} {name}"))?;
        let link = FdLink::try_from(prog.take_link(id)?)?;
        let pinned = link
            .pin(&path)
            .with_context(|| format!("pinning the link at {}", path.display()))?;
        Ok(HeldLink {
            path,
            link: pinned.into(),
        })
    }

    /// Attaches the role's ingress and egress programs to `iface`.
    pub fn attach(&mut self, iface: &str, ifindex: u32, role: Role) -> Result<()> {
        let (ingress_prog, egress_prog) = role.programs();
        let ingress = self.attach_tc(iface, ifindex, ingress_prog, TcAttachType::Ingress)?;
        let egress = match self.attach_tc(iface, ifindex, egress_prog, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                let _ = ingress.release();
                return Err(e);
            }
        };
        let mut links = vec![ingress, egress];
        let mut mode = xdp_mode::NONE;
        if role == Role::External {
            let (link, m) = self.attach_xdp(iface, ifindex);
            links.extend(link);
            mode = m;
        }
        self.attached.insert(
            iface.to_string(),
            Attachment {
                ifindex,
                role,
                links,
            },
        );
        self.record(iface, ifindex, role, mode);
        let xdp = xdp_mode_name(mode);
        info!(iface, ifindex, ?role, xdp, "attached");
        Ok(())
    }

    /// Detaches from `iface`. When the interface is already gone the kernel
    /// has dropped the links with it; only the pins remain to remove.
    pub fn detach(&mut self, iface: &str, gone: bool) {
        let Some(a) = self.attached.remove(iface) else {
            return;
        };
        if let Ok(mut status) = self.status_map() {
            let _ = status.remove(&a.ifindex);
        }
        for link in a.links {
            let path = link.path.clone();
            match link.release() {
                Ok(()) => {}
                Err(e) if gone => debug!(iface, "releasing {} after removal: {e}", path.display()),
                Err(e) => warn!(iface, "releasing {}: {e}", path.display()),
            }
        }
        info!(iface, "detached");
    }

    /// Lets go of the links without detaching them: the programs keep
    /// running on their pinned maps until the next agent takes them over.
    pub fn leave_attached(&mut self) {
        let count = self.attached.len();
        self.attached.clear();
        self.socket_links.clear();
        info!(
            interfaces = count,
            "datapath left attached for the next agent"
        );
    }

    pub fn detach_all(&mut self) {
        for link in std::mem::take(&mut self.socket_links) {
            let path = link.path.clone();
            if let Err(e) = link.release() {
                warn!("releasing {}: {e}", path.display());
            }
        }
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for n in names {
            self.detach(&n, false);
        }
    }
}

/// `switchyard agent --cleanup`: detaches any programs left attached
/// (removing their link pins) and removes the pinned maps and the pin
/// directory.
pub fn cleanup(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        info!(pin_dir = %pin_dir.display(), "nothing to clean up");
        return Ok(());
    }
    let links = pin_dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            let p = entry.path();
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            info!(pin = %p.display(), "detached and removed");
        }
    }
    match std::fs::remove_dir(&links) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context(format!("removing {}", links.display()));
        }
        _ => {}
    }
    for name in map_names::ALL {
        let p = pin_dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => info!(pin = %p.display(), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("removing {}", p.display())),
        }
    }
    std::fs::remove_dir(pin_dir).with_context(|| {
        format!(
            "removing {} (does it hold pins that are not ours?)",
            pin_dir.display()
        )
    })?;
    info!(pin_dir = %pin_dir.display(), "removed");
    Ok(())
}
