//! gannetd: the gannet node agent.
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this binary only calls into it"
)]

use std::process::ExitCode;

use clap::Parser as _;
use gannet_agent::{
    config::{self, Cli, Command, EXIT_USAGE, StatusOutput},
    datapath, endpoints,
    kubelet::{self, image::ImageCommand},
    lock::AgentLocks,
    logging, masquerade, names, overlay, run, status,
};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => {
            logging::init(args.common.log_format);
            let config = match args.validate() {
                Ok(c) => c,
                Err(e) => {
                    eprint!("gannetd: {e}");
                    return ExitCode::from(EXIT_USAGE as u8);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = format!("{e:#}"), "gannetd failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status(args) => {
            let dirs = &args.dirs;
            match status::read_nft(&dirs.state_dir)
                .map_err(|e| e.to_string())
                .and_then(|nft| match nft {
                    Some(status) => Ok(status),
                    None => {
                        status::read(&dirs.bpf_root, &dirs.state_dir).map_err(|e| e.to_string())
                    }
                }) {
                Ok(status) => {
                    let text = match args.output {
                        StatusOutput::Json => {
                            serde_json::to_string_pretty(&status).map(|json| json + "\n")
                        }
                        StatusOutput::Table => Ok(status::render(&status)),
                    };
                    match text {
                        Ok(text) => {
                            print!("{text}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("gannetd status: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!(
                        "gannetd status: {e} (is gannetd set up with --bpf-root {}?)",
                        dirs.bpf_root.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Image(args) => {
            logging::init(config::LogFormat::Plain);
            let ImageCommand::Import {
                file,
                container_runtime,
            } = args.command;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(kubelet::image::import(&container_runtime, &file)) {
                Ok(images) => {
                    for image in images {
                        println!("{image}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gannetd image import: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cleanup(args) => {
            logging::init(args.log_format);
            let config = match args.validate() {
                Ok(c) => c,
                Err(e) => {
                    eprint!("gannetd: {e}");
                    return ExitCode::from(EXIT_USAGE as u8);
                }
            };
            // The same locks a running gannetd holds: never cut one that runs, whichever of
            // its directories cleanup is given. Held until cleanup is done.
            let _locks = match AgentLocks::take_existing(&config.bpf_root, &config.state_dir) {
                Ok(locks) => locks,
                Err(e) => {
                    error!(
                        error = %e,
                        "refusing to clean up: a gannetd is still running on these directories; \
                         stop it first"
                    );
                    return ExitCode::FAILURE;
                }
            };
            // A gannetd older than the locks.
            if endpoints::agent_running(&config.state_dir) {
                error!(
                    state_dir = %config.state_dir.display(),
                    "gannetd is still running (its CNI socket answers): stop it before cleanup"
                );
                return ExitCode::FAILURE;
            }
            let network = overlay::cleanup(&config.state_dir)
                .map_err(|e| e.to_string())
                .and_then(|mut removed| {
                    if masquerade::remove().map_err(|e| e.to_string())? {
                        removed.push(format!("nftables table inet {}", masquerade::TABLE));
                    }
                    if datapath::nft::remove().map_err(|e| e.to_string())? {
                        removed.push(format!("nftables table inet {}", datapath::nft::TABLE));
                    }
                    if names::cleanup(&config.state_dir).map_err(|e| e.to_string())? {
                        removed.push(config.state_dir.join(names::FILE).display().to_string());
                    }
                    Ok(removed)
                });
            let network = match network {
                Ok(removed) => {
                    for what in &removed {
                        info!(removed = what, "network state cleaned up");
                    }
                    removed.len()
                }
                Err(e) => {
                    error!(error = %e, "cleanup of the overlay or the nftables tables failed");
                    return ExitCode::FAILURE;
                }
            };
            match datapath::cleanup(&config.bpf_root)
                .and_then(|r| endpoints::cleanup(&config.state_dir).map(|s| r.len() + s + network))
            {
                Ok(removed) => {
                    info!(
                        removed,
                        bpf_root = %config.bpf_root.display(),
                        "cleaned up: programs detached, maps and pins removed"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!(error = %e, "cleanup failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
