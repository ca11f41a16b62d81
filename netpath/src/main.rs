//! The `netpath` command: parses the command line, opens a session with the instance and hands
//! the verb to `netpath::commands`. Errors leave here as one line and a non-zero exit.
use std::process::ExitCode;

use clap::Parser as _;
use netpath::{
    app::App,
    cli::{Cli, Command, EndpointCommand, NetworkCommand},
    commands::{bridge_attach, endpoint, inspect, network, publish, reconcile},
    instance::Instance,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netpath: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<String> {
    if let Command::Daemon { interval } = cli.command {
        return daemon(&cli, interval);
    }
    let mut app = App::open(&cli.instance, cli.config.as_deref(), cli.uplinks.clone())?;
    let mutating = !matches!(
        cli.command,
        Command::Stats
            | Command::Status
            | Command::Purge { .. }
            | Command::Reconcile
            | Command::Daemon { .. }
            | Command::Port(_)
            | Command::Network(NetworkCommand::Ls | NetworkCommand::Inspect { .. })
            | Command::Endpoint(EndpointCommand::Ls | EndpointCommand::Inspect { .. })
    );
    if mutating {
        // Finish or undo whatever an interrupted command left behind before changing more.
        for note in reconcile::reconcile(&mut app)? {
            log::warn!("reconcile: {note}");
        }
    }
    Ok(match cli.command {
        Command::Network(cmd) => match cmd {
            NetworkCommand::Create(args) => {
                let n = network::create(&mut app, &args)?;
                format!("{}\n", n.name)
            }
            NetworkCommand::Ls => network::list(&app)?,
            NetworkCommand::Inspect { names } => format!("{}\n", network::inspect(&app, &names)?),
            NetworkCommand::Rm { names } => {
                let mut out = String::new();
                for n in names {
                    network::remove(&mut app, &n)?;
                    out.push_str(&format!("{n}\n"));
                }
                out
            }
        },
        Command::Endpoint(cmd) => match cmd {
            EndpointCommand::Create(args) => {
                let ep = endpoint::create(&mut app, &args)?;
                format!("{}\n", ep.name)
            }
            EndpointCommand::Connect { network, name, ip } => {
                let a = endpoint::connect(&mut app, &network, &name, ip.as_deref())?;
                format!("{name} {} {}\n", a.ifname, a.ip)
            }
            EndpointCommand::Disconnect { network, name } => {
                endpoint::disconnect(&mut app, &network, &name)?;
                format!("{name}\n")
            }
            EndpointCommand::Ls => endpoint::list(&app)?,
            EndpointCommand::Inspect { names } => format!("{}\n", endpoint::inspect(&app, &names)?),
            EndpointCommand::Rm { names } => {
                let mut out = String::new();
                for n in names {
                    endpoint::remove(&mut app, &n)?;
                    out.push_str(&format!("{n}\n"));
                }
                out
            }
        },
        Command::Attach(a) => {
            let rec = bridge_attach::attach(&mut app, &a.bridge, &a.netns, &a.address, &a.ifname)?;
            format!(
                "{} {}/{} on {}\n",
                rec.netns.display(),
                rec.address,
                rec.prefix_len,
                rec.bridge
            )
        }
        Command::Detach(d) => {
            bridge_attach::detach(&mut app, &d.bridge, &d.netns)?;
            String::new()
        }
        Command::Publish(p) => {
            let records = publish::publish(&mut app, &p.mappings, p.file.as_deref())?;
            publish::describe(&records)
        }
        Command::Unpublish(u) => {
            let records = publish::unpublish(
                &mut app,
                &u.mappings,
                u.file.as_deref(),
                u.endpoint.as_deref(),
            )?;
            publish::describe(&records)
        }
        Command::Port(p) => {
            let name = if p.all { None } else { p.name.as_deref() };
            publish::port(&app, name, p.port.as_deref())?
        }
        Command::Stats => inspect::stats(&app)?,
        Command::Status => inspect::status(&app)?,
        Command::Reconcile => {
            let notes = reconcile::reconcile(&mut app)?;
            if notes.is_empty() {
                "in sync\n".into()
            } else {
                notes.join("\n") + "\n"
            }
        }
        Command::Daemon { .. } => unreachable!("handled above"),
        Command::Purge { force } => {
            if !force {
                anyhow::bail!(
                    "purge removes every endpoint, network and pin of instance {}; add --force",
                    cli.instance
                );
            }
            let notes = reconcile::purge(&mut app)?;
            drop(app);
            let instance = Instance::new(&cli.instance)?;
            for dir in [instance.state_dir(), instance.run_dir()] {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
            }
            notes.join("\n") + if notes.is_empty() { "" } else { "\n" }
        }
    })
}

/// Reconciles every `interval` seconds until killed. Holds the instance lock only while it
/// works, so CLI commands run in between.
fn daemon(cli: &Cli, interval: u64) -> anyhow::Result<String> {
    eprintln!(
        "netpath daemon: instance {}, reconciling every {interval}s (pid {})",
        cli.instance,
        std::process::id()
    );
    loop {
        {
            let mut app = App::open(&cli.instance, cli.config.as_deref(), cli.uplinks.clone())?;
            match reconcile::reconcile(&mut app) {
                Ok(notes) => notes.iter().for_each(|n| eprintln!("netpath daemon: {n}")),
                Err(e) => eprintln!("netpath daemon: reconcile failed: {e}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
    }
}
