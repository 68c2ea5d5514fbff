//! A runtime-side harness: runs plugins exactly as a container runtime does (environment + stdin,
//! conflists with `name`/`cniVersion` injected, `prevResult` threaded through, `DEL` in reverse
//! order), always inside a "node" network namespace of the test's own.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gannet_testkit::{Netns, spawn};
use serde_json::{Value, json};

/// The plugin under test.
pub(crate) const GANNET: &str = env!("CARGO_BIN_EXE_gannet-cni");
/// Debian's reference plugins.
pub(crate) const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// How long one plugin invocation may take.
pub(crate) const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The node's own addresses (on a dummy link in the node namespace).
pub(crate) const NODE_V4: &str = "10.99.0.1";
/// The node's IPv6 address.
pub(crate) const NODE_V6: &str = "fd99::1";

/// What a plugin invocation returned.
#[derive(Debug)]
pub(crate) struct Reply {
    /// Exit status code.
    pub(crate) status: Option<i32>,
    /// Raw stdout.
    pub(crate) stdout: String,
    /// Raw stderr (shown by `Debug` in failure messages).
    #[expect(dead_code, reason = "read through Debug in assertion messages")]
    pub(crate) stderr: String,
}

impl Reply {
    /// Whether it exited 0.
    pub(crate) fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// Stdout parsed as JSON (panics with the reply if it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self:?}"))
    }

    /// Asserts success and returns stdout as JSON (or `Null` if empty).
    pub(crate) fn expect_ok(&self, what: &str) -> Value {
        assert!(self.ok(), "{what}: expected success, got {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a CNI error with `code` whose message contains every one of `needles`; returns it.
    pub(crate) fn expect_error(&self, code: u64, needles: &[&str], what: &str) -> Value {
        assert!(
            !self.ok(),
            "{what}: expected error {code}, got success: {self:?}"
        );
        let json = self.json();
        assert_eq!(
            json["code"].as_u64(),
            Some(code),
            "{what}: wrong error code in {json}"
        );
        let text = format!(
            "{} {}",
            json["msg"].as_str().unwrap_or(""),
            json["details"].as_str().unwrap_or("")
        );
        for needle in needles {
            assert!(
                text.contains(needle),
                "{what}: error message lacks {needle:?}: {json}"
            );
        }
        assert!(
            json["cniVersion"].is_string(),
            "{what}: error without cniVersion: {json}"
        );
        json
    }
}

/// One attachment as a runtime knows it.
#[derive(Debug, Clone)]
pub(crate) struct Attach {
    /// `CNI_CONTAINERID`.
    pub(crate) id: String,
    /// `CNI_NETNS` (empty: unset, as in containerd's second DEL).
    pub(crate) netns: String,
    /// `CNI_IFNAME`.
    pub(crate) ifname: String,
    /// `CNI_ARGS`.
    pub(crate) args: String,
}

impl Attach {
    /// An attachment `id` of pod namespace `netns` as `eth0`.
    pub(crate) fn new(id: &str, netns: &Netns) -> Attach {
        Attach {
            id: id.to_owned(),
            netns: netns.path().display().to_string(),
            ifname: "eth0".to_owned(),
            args: String::new(),
        }
    }
}

/// A simulated node: its network namespace (where plugins run), a temp dir for state, `CNI_PATH`.
#[derive(Debug)]
pub(crate) struct Node {
    /// The node's network namespace.
    pub(crate) ns: Netns,
    /// Per-test state directory.
    pub(crate) dir: tempfile::TempDir,
    /// `CNI_PATH`.
    pub(crate) cni_path: String,
    /// Extra environment for every invocation.
    pub(crate) extra_env: Vec<(String, String)>,
}

impl Node {
    /// A node namespace whose loopback holds the node's addresses.
    pub(crate) fn new() -> Node {
        let ns = Netns::new("node").expect("creating the node netns");
        // The kernel here has no dummy links: the node's addresses live on its loopback.
        ns.ip(&["addr", "add", &format!("{NODE_V4}/32"), "dev", "lo"])
            .expect("node v4");
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .expect("node v6");
        let dir = tempfile::Builder::new()
            .prefix("gannet-cni-test-")
            .tempdir()
            .expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        symlink(GANNET, bin.join("gannet-cni")).expect("linking the plugin");
        let cni_path = format!("{}:{REFERENCE_PLUGINS}", bin.display());
        Node {
            ns,
            dir,
            cni_path,
            extra_env: Vec::new(),
        }
    }

    /// The state directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A gannet-cni configuration with the built-in IPAM over `subnets`, its store in the temp dir.
    pub(crate) fn config(&self, version: &str, subnets: &[&str]) -> Value {
        json!({
            "cniVersion": version,
            "name": "gnet",
            "type": "gannet-cni",
            "ipam": {
                "type": "gannet",
                "ranges": subnets.iter().map(|s| json!([{"subnet": s}])).collect::<Vec<_>>(),
                "dataDir": self.path().join("ipam"),
            },
        })
    }

    /// The IPAM store directory of network `name`.
    pub(crate) fn store(&self, name: &str) -> PathBuf {
        self.path().join("ipam").join(name)
    }

    /// The address records in the store of network `name`: (ip, container id).
    pub(crate) fn allocations(&self, name: &str) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(self.store(name)) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.parse::<std::net::IpAddr>().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((name, text.lines().next().unwrap_or("").to_owned()))
            })
            .collect();
        out.sort();
        out
    }

    /// Runs `plugin` (found in `CNI_PATH`) with `CNI_COMMAND=command`, `att`'s variables and
    /// `stdin`, inside the node namespace.
    pub(crate) fn exec(
        &self,
        plugin: &str,
        command: &str,
        att: Option<&Attach>,
        stdin: &Value,
    ) -> Reply {
        let mut env: Vec<(String, String)> = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_PATH".into(), self.cni_path.clone()),
        ];
        if let Some(att) = att {
            env.push(("CNI_CONTAINERID".into(), att.id.clone()));
            env.push(("CNI_IFNAME".into(), att.ifname.clone()));
            env.push(("CNI_ARGS".into(), att.args.clone()));
            if !att.netns.is_empty() {
                env.push(("CNI_NETNS".into(), att.netns.clone()));
            }
        }
        env.extend(self.extra_env.iter().cloned());
        self.exec_raw(plugin, &env, stdin.to_string().as_bytes())
    }

    /// Starts gannet-cni with `CNI_COMMAND=command`, `att`'s variables, `extra` variables and
    /// `stdin` (closed after writing), without waiting.
    pub(crate) fn spawn_gannet(
        &self,
        command: &str,
        att: &Attach,
        stdin: &Value,
        extra: &[(&str, &str)],
    ) -> gannet_testkit::ChildGuard {
        let mut cmd = Command::new(GANNET);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_CONTAINERID", &att.id)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_NETNS", &att.netns)
            .envs(extra.iter().copied());
        let mut child = spawn(cmd, Some(&self.ns), None).expect("starting the plugin");
        {
            use std::io::Write as _;
            let _ = child
                .stdin()
                .expect("stdin")
                .write_all(stdin.to_string().as_bytes());
        }
        child.close_stdin();
        child
    }

    /// Runs `plugin` with exactly `env` (plus `PATH`) and raw `stdin`.
    pub(crate) fn exec_raw(&self, plugin: &str, env: &[(String, String)], stdin: &[u8]) -> Reply {
        let path = self
            .cni_path
            .split(':')
            .map(|d| Path::new(d).join(plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin} not in {}", self.cni_path));
        let mut cmd = Command::new(path);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = spawn(cmd, Some(&self.ns), None).expect("starting the plugin");
        {
            use std::io::Write as _;
            let stdin_pipe = child.stdin().expect("stdin");
            // A plugin may exit without reading; its reply tells.
            let _ = stdin_pipe.write_all(stdin);
        }
        let output = child.wait_output(EXEC_TIMEOUT).expect("plugin finished");
        Reply {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The configuration a runtime passes to plugin `index` of `list` for `version`.
    fn plugin_conf(
        list: &Value,
        index: usize,
        version: &str,
        prev: Option<&Value>,
        runtime: &Value,
    ) -> Value {
        let mut conf = list["plugins"][index].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = json!(version);
        if let Some(caps) = conf.get("capabilities").and_then(Value::as_object).cloned() {
            let mut rc = serde_json::Map::new();
            for (cap, enabled) in caps {
                if enabled == json!(true)
                    && let Some(value) = runtime.get(&cap)
                {
                    rc.insert(cap, value.clone());
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// The version a runtime picks for `list`: the newest of `cniVersions` it speaks, else
    /// `cniVersion`.
    pub(crate) fn list_version(list: &Value) -> String {
        let ours = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
        list.get("cniVersions")
            .and_then(Value::as_array)
            .and_then(|versions| {
                versions
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|v| ours.contains(v))
                    .max_by_key(|v| ours.iter().position(|o| o == v))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| list["cniVersion"].as_str().expect("cniVersion").to_owned())
    }

    /// ADD of a conflist: each plugin in order, each given the previous result. Returns the final
    /// result, or the failing plugin's reply.
    pub(crate) fn add_list(
        &self,
        list: &Value,
        att: &Attach,
        runtime: &Value,
    ) -> Result<Value, Reply> {
        let version = Node::list_version(list);
        let mut prev: Option<Value> = None;
        for (index, plugin) in list["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .enumerate()
        {
            let conf = Node::plugin_conf(list, index, &version, prev.as_ref(), runtime);
            let reply = self.exec(
                plugin["type"].as_str().expect("type"),
                "ADD",
                Some(att),
                &conf,
            );
            if !reply.ok() {
                return Err(reply);
            }
            prev = Some(reply.json());
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK of a conflist (in order, each with the cached result).
    pub(crate) fn check_list(
        &self,
        list: &Value,
        att: &Attach,
        result: &Value,
        runtime: &Value,
    ) -> Result<(), Reply> {
        let version = Node::list_version(list);
        for (index, plugin) in list["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .enumerate()
        {
            let conf = Node::plugin_conf(list, index, &version, Some(result), runtime);
            let reply = self.exec(
                plugin["type"].as_str().expect("type"),
                "CHECK",
                Some(att),
                &conf,
            );
            if !reply.ok() {
                return Err(reply);
            }
        }
        Ok(())
    }

    /// DEL of a conflist: in reverse order, each with the cached result if there is one.
    pub(crate) fn del_list(
        &self,
        list: &Value,
        att: &Attach,
        result: Option<&Value>,
        runtime: &Value,
    ) -> Result<(), Reply> {
        let version = Node::list_version(list);
        let plugins = list["plugins"].as_array().expect("plugins");
        for index in (0..plugins.len()).rev() {
            let conf = Node::plugin_conf(list, index, &version, result, runtime);
            let reply = self.exec(
                plugins[index]["type"].as_str().expect("type"),
                "DEL",
                Some(att),
                &conf,
            );
            if !reply.ok() {
                return Err(reply);
            }
        }
        Ok(())
    }

    /// GC of the gannet plugin config with the attachments still valid.
    pub(crate) fn gc(&self, conf: &Value, valid: &[&Attach]) -> Reply {
        let mut conf = conf.clone();
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|a| json!({"containerID": a.id, "ifname": a.ifname}))
            .collect();
        self.exec("gannet-cni", "GC", None, &conf)
    }

    /// Links in the node namespace whose name starts with `gnt`.
    pub(crate) fn host_veths(&self) -> Vec<String> {
        link_names(&self.ns)
            .into_iter()
            .filter(|n| n.starts_with("gnt"))
            .collect()
    }

    /// Waits (at most 10 s) until no retired veth (`gnd…`, deleted by DEL's detached process)
    /// is left in the node namespace or in any of `pods`; panics naming what is left.
    pub(crate) fn wait_for_tombstones(&self, pods: &[&Netns]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut left: Vec<String> = link_names(&self.ns)
                .into_iter()
                .filter(|n| n.starts_with("gnd"))
                .collect();
            for pod in pods {
                left.extend(
                    link_names(pod)
                        .into_iter()
                        .filter(|n| n != "lo")
                        .map(|n| format!("{n} in {}", pod.name())),
                );
            }
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "retired interfaces still there 10 s after DEL: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The names of the links in `ns`.
pub(crate) fn link_names(ns: &Netns) -> Vec<String> {
    let out = ns.ip(&["-o", "link", "show"]).expect("ip link");
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Runs `ip args` in `ns` and returns stdout.
pub(crate) fn ip(ns: &Netns, args: &[&str]) -> String {
    ns.ip(args)
        .unwrap_or_else(|e| panic!("ip {args:?} in {}: {e:#}", ns.name()))
}
