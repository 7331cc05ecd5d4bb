//! Network-namespace topology for real partitions and WAN links (Linux, root, iproute2).
//!
//! A partition must cut *node-to-node* traffic the way a cable or a switch port fails: packets
//! vanish, TCP connections hang instead of closing, and only timeouts notice (FIELD-NOTES:
//! "test detection with SIGSTOP or a downed link, not only SIGKILL"). On loopback that cannot
//! be done without touching the host's firewall, so when partitions or WAN links are asked for
//! and the harness runs as root with `ip netns`, it builds a private topology:
//!
//! ```text
//!  namespace <prefix>-hub                namespace <prefix>-nK (one per node)
//!  the harness's WAN switch  <--TUN dtK-->  198.18.0.K/24   libp2p listen address
//!  bridge dpm 198.19.0.254/24 <-vmK--mgmt0-> 198.19.0.K/24   HTTP API and DNS
//! ```
//!
//! (With [`Netns::create`], for other tools, peer traffic goes over a second bridge `dpd`
//! instead, through veths `vdK`/`data0`, and [`Netns::set_isolated`] cuts a node by setting its
//! bridge port down. The chaos harness uses [`Netns::create_for_wan`].)
//!
//! The harness itself moves into the hub namespace (before its async runtime starts, so every
//! thread inherits it) and reaches the nodes' APIs over the management bridge. Peer traffic goes
//! through the harness: node K's TUN device `dtK` is created in the hub, moved into node K's
//! namespace, and every packet it sends to another node passes [`crate::wan`], which delays,
//! drops (loss) or cuts it (partitions: one node isolated, split-brain halves, one-way cuts).
//! Clients still reach every node over the management bridge — the classic "isolated replica"
//! of Jepsen.
//!
//! Safety: only addresses in 198.18.0.0/15 (RFC 2544 benchmarking space) are used, every
//! interface lives in a namespace this module created (`<prefix>` = `dpinsim-<pid>`), nothing
//! in the host namespace is touched, and [`Netns::destroy`] (also run on drop, and for leftovers
//! of dead runs by [`remove_stale`]) deletes every namespace again — which deletes the veths,
//! TUN devices and bridges with them.

use std::net::Ipv4Addr;
use std::process::Command;

/// Namespace name prefix of every run.
pub const PREFIX: &str = "dpinsim";

/// Errors while building or changing the topology.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run or failed.
    #[error("`ip {args}` failed: {message}")]
    Ip {
        /// The arguments.
        args: String,
        /// stderr or the spawn error.
        message: String,
    },
    /// Entering the hub namespace failed.
    #[error("cannot enter network namespace {ns}: {message}")]
    Enter {
        /// Namespace name.
        ns: String,
        /// Why.
        message: String,
    },
    /// More nodes than addresses in the /24.
    #[error("at most 250 nodes fit the namespace topology")]
    TooManyNodes,
}

/// Runs `ip ARGS` (in the calling thread's namespace).
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Ip {
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether this process may build namespaces: root, and `ip netns list` works.
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Deletes namespaces left behind by runs whose process no longer exists.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The topology of one run; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    prefix: String,
    nodes: usize,
    created: Vec<String>,
    /// Whether peer traffic runs over the `dpd` bridge (else the WAN switch adds TUNs).
    data_bridge: bool,
}

impl Netns {
    /// Builds the hub and `nodes` node namespaces, peer traffic over the `dpd` bridge. On
    /// error everything built so far is removed again.
    pub fn create(nodes: usize) -> Result<Self, NetnsError> {
        Self::create_inner(nodes, true)
    }

    /// Builds the hub and `nodes` node namespaces without a peer-traffic path: the WAN switch
    /// ([`crate::wan::Wan::start`]) adds one TUN device per node.
    pub fn create_for_wan(nodes: usize) -> Result<Self, NetnsError> {
        Self::create_inner(nodes, false)
    }

    fn create_inner(nodes: usize, data_bridge: bool) -> Result<Self, NetnsError> {
        if nodes > 250 {
            return Err(NetnsError::TooManyNodes);
        }
        let mut ns = Netns {
            prefix: format!("{PREFIX}-{}", std::process::id()),
            nodes,
            created: Vec::new(),
            data_bridge,
        };
        ns.build()?; // on error, drop destroys what exists
        Ok(ns)
    }

    fn build(&mut self) -> Result<(), NetnsError> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        self.created.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "dev", "lo", "up"])?;
        if self.data_bridge {
            ip(&["-n", &hub, "link", "add", "name", "dpd", "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", "dev", "dpd", "up"])?;
        }
        ip(&["-n", &hub, "link", "add", "name", "dpm", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", "198.19.0.254/24", "dev", "dpm"])?;
        ip(&["-n", &hub, "link", "set", "dev", "dpm", "up"])?;
        for k in 1..=self.nodes {
            let node = self.node_ns(k);
            ip(&["netns", "add", &node])?;
            self.created.push(node.clone());
            ip(&["-n", &node, "link", "set", "dev", "lo", "up"])?;
            let mut links = vec![("dpm", format!("vm{k}"), "mgmt0", self.mgmt_addr(k))];
            if self.data_bridge {
                links.push(("dpd", format!("vd{k}"), "data0", self.data_addr(k)));
            }
            // Without the bridge, peer traffic goes through a TUN device the WAN switch adds.
            for (bridge, hub_if, node_if, addr) in links {
                ip(&[
                    "-n", &hub, "link", "add", "name", &hub_if, "type", "veth", "peer", "name",
                    node_if, "netns", &node,
                ])?;
                ip(&["-n", &hub, "link", "set", "dev", &hub_if, "master", bridge])?;
                ip(&["-n", &hub, "link", "set", "dev", &hub_if, "up"])?;
                let cidr = format!("{addr}/24");
                ip(&["-n", &node, "addr", "add", &cidr, "dev", node_if])?;
                ip(&["-n", &node, "link", "set", "dev", node_if, "up"])?;
            }
        }
        Ok(())
    }

    /// Hub namespace name.
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Namespace of node `k` (1-based).
    pub fn node_ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.prefix)
    }

    /// Every namespace this run created.
    pub fn names(&self) -> &[String] {
        &self.created
    }

    /// Peer-traffic address of node `k`.
    pub fn data_addr(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, k as u8)
    }

    /// API/DNS address of node `k`.
    pub fn mgmt_addr(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, k as u8)
    }

    /// The harness's own address on the management bridge.
    pub fn hub_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, 254)
    }

    /// Moves the calling thread into the hub namespace. Call it from `main` before any other
    /// thread exists: threads created later inherit it.
    pub fn enter_hub(&self) -> Result<(), NetnsError> {
        let hub = self.hub();
        let path = format!("/run/netns/{hub}");
        let err = |message: String| NetnsError::Enter {
            ns: hub.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|e| err(format!("{path}: {e}")))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| err(e.to_string()))
    }

    /// Cuts (`isolated = true`) or restores node `k`'s link to every other node, on the peer
    /// bridge of [`Netns::create`] (with [`Netns::create_for_wan`], cut through the switch).
    pub fn set_isolated(&self, k: usize, isolated: bool) -> Result<(), NetnsError> {
        if !self.data_bridge {
            return Err(NetnsError::Ip {
                args: format!("link set dev vd{k}"),
                message: "no peer bridge in this topology: partitions go through the WAN switch"
                    .to_owned(),
            });
        }
        let state = if isolated { "down" } else { "up" };
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            "dev",
            &format!("vd{k}"),
            state,
        ])
    }

    /// Deletes every namespace of this run (and with them all veths and bridges).
    pub fn destroy(&mut self) {
        for name in self.created.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("dpin-sim: {e}");
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Deletes the named namespaces if they exist and belong to this harness (used by `stop`).
pub fn remove_named(names: &[String]) {
    for n in names {
        if n.starts_with(&format!("{PREFIX}-")) {
            let _ = ip(&["netns", "del", n]);
        }
    }
}
