//! `gannet-cni`: the CNI plugin binary. Invoked by a runtime with `CNI_COMMAND` set it speaks the
//! CNI protocol (result or error object on stdout, logs elsewhere); `gannet-cni install` installs it.
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this binary only calls into it"
)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gannet_cni::install;

/// Exit status for a bad command line (`EX_USAGE`).
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gannet-cni",
    version,
    about = "gannet's CNI plugin (run by container runtimes with CNI_COMMAND set)",
    after_help = "Run by a runtime (CNI_COMMAND set, e.g. CNI_COMMAND=VERSION for the spec \
                  versions it speaks) it follows the CNI protocol whatever its arguments; \
                  --version and the subcommands are for a person at a shell."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the plugin binary and a conflist (10-gannet.conflist) that works with gannetd on
    /// this node: pods registered on its CNI socket, addresses from its subnet file.
    Install {
        /// CNI binary directory.
        #[arg(long, default_value = install::DEFAULT_BIN_DIR)]
        bin_dir: PathBuf,
        /// CNI configuration directory.
        #[arg(long, default_value = install::DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
        /// Replace an existing 10-gannet.conflist.
        #[arg(long)]
        overwrite_conf: bool,
        /// gannetd's CNI socket, written as `agentSocket` (`cni.sock` in gannetd's
        /// `--state-dir`); `--agent-socket=` leaves it out (the plugin then works alone: pods
        /// are not reported to the control plane and get no fast path).
        #[arg(long, default_value = gannet_cni::agent_api::DEFAULT_SOCKET)]
        agent_socket: String,
        /// The node's subnet file that gannetd writes, written as `subnetFile` (gannetd's
        /// `--subnet-file`, default `subnet.env` in its `--state-dir`).
        #[arg(long, default_value = gannet_cni::config::DEFAULT_SUBNET_FILE)]
        subnet_file: PathBuf,
    },
}

fn main() -> ExitCode {
    // A runtime invocation: the CNI protocol, whatever the arguments.
    if std::env::var_os("CNI_COMMAND").is_some() || std::env::args_os().len() <= 1 {
        let outcome =
            gannet_cni::plugin::run(&|name| std::env::var(name).ok(), &mut std::io::stdin());
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(&outcome.stdout)
            .and_then(|()| stdout.flush());
        return ExitCode::from(outcome.exit_code);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gannet-cni: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Install {
            bin_dir,
            conf_dir,
            overwrite_conf,
            agent_socket,
            subnet_file,
        } => {
            let exe = std::env::current_exe().context("locating the running executable")?;
            let node = install::NodeFiles {
                agent_socket: (!agent_socket.is_empty()).then(|| PathBuf::from(agent_socket)),
                subnet_file,
            };
            let done = install::install(&exe, &bin_dir, &conf_dir, overwrite_conf, &node)?;
            println!("installed {}", done.binary.display());
            if done.conflist_written {
                println!("wrote {}", done.conflist.display());
            } else {
                println!(
                    "kept the existing {} (use --overwrite-conf to replace it)",
                    done.conflist.display()
                );
            }
            for name in &done.missing_companions {
                eprintln!(
                    "gannet-cni: warning: no {name} plugin in {}: runtimes need it beside gannet-cni \
                     (the reference CNI plugins; Debian: containernetworking-plugins, in /usr/lib/cni)",
                    bin_dir.display()
                );
            }
            Ok(())
        }
    }
}
