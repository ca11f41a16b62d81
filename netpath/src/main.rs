//! The `netpath` command: parses the command line, opens a session with the instance and hands
//! the verb to `netpath::commands`. Errors leave here as one line and a non-zero exit.
use std::process::ExitCode;

use clap::Parser as _;
use netpath::{
    app::{App, AppError},
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
    if let Command::Purge { force } = cli.command {
        if !force {
            anyhow::bail!(
                "purge removes every endpoint, network and pin of instance {}; add --force",
                cli.instance
            );
        }
        let instance = Instance::new(&cli.instance)?;
        let notes = match App::open(&cli.instance, cli.config.as_deref(), cli.uplinks.clone()) {
            Ok(mut app) => reconcile::purge(&mut app)?,
            // The namespace it served is gone: clear what it left outside it.
            Err(AppError::ServedElsewhere { location: None, .. }) => {
                reconcile::purge_left_behind(&instance)?
            }
            Err(e) => return Err(e.into()),
        };
        for dir in [instance.state_dir(), instance.run_dir()] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
        }
        return Ok(notes.join("\n") + if notes.is_empty() { "" } else { "\n" });
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
        for note in reconcile::before_change(&mut app)? {
            log::warn!("reconcile: {note}");
        }
    }
    let output = dispatch(&mut app, cli.command)?;
    if mutating {
        reconcile::after_change(&app)?;
    }
    Ok(output)
}

/// Runs one command in an opened session.
fn dispatch(app: &mut App, command: Command) -> anyhow::Result<String> {
    Ok(match command {
        Command::Network(cmd) => match cmd {
            NetworkCommand::Create(args) => {
                let n = network::create(app, &args)?;
                format!("{}\n", n.name)
            }
            NetworkCommand::Ls => network::list(app)?,
            NetworkCommand::Inspect { names } => format!("{}\n", network::inspect(app, &names)?),
            NetworkCommand::Rm { names } => {
                let mut out = String::new();
                for n in names {
                    network::remove(app, &n)?;
                    out.push_str(&format!("{n}\n"));
                }
                out
            }
        },
        Command::Endpoint(cmd) => match cmd {
            EndpointCommand::Create(args) => {
                let ep = endpoint::create(app, &args)?;
                format!("{}\n", ep.name)
            }
            EndpointCommand::Connect { network, name, ip } => {
                let a = endpoint::connect(app, &network, &name, ip.as_deref())?;
                format!("{name} {} {}\n", a.ifname, a.ip)
            }
            EndpointCommand::Disconnect { network, name } => {
                endpoint::disconnect(app, &network, &name)?;
                format!("{name}\n")
            }
            EndpointCommand::Ls => endpoint::list(app)?,
            EndpointCommand::Inspect { names } => format!("{}\n", endpoint::inspect(app, &names)?),
            EndpointCommand::Rm { names } => {
                let mut out = String::new();
                for n in names {
                    endpoint::remove(app, &n)?;
                    out.push_str(&format!("{n}\n"));
                }
                out
            }
        },
        Command::Attach(a) => {
            let rec = bridge_attach::attach(app, &a.bridge, &a.netns, &a.address, &a.ifname)?;
            format!(
                "{} {}/{} on {}\n",
                rec.netns.display(),
                rec.address,
                rec.prefix_len,
                rec.bridge
            )
        }
        Command::Detach(d) => {
            bridge_attach::detach(app, &d.bridge, &d.netns)?;
            String::new()
        }
        Command::Publish(p) => {
            let records = publish::publish(app, &p.mappings, p.file.as_deref())?;
            publish::describe(&records)
        }
        Command::Unpublish(u) => {
            let records =
                publish::unpublish(app, &u.mappings, u.file.as_deref(), u.endpoint.as_deref())?;
            publish::describe(&records)
        }
        Command::Port(p) => {
            let name = if p.all { None } else { p.name.as_deref() };
            publish::port(app, name, p.port.as_deref())?
        }
        Command::Stats => inspect::stats(app)?,
        Command::Status => inspect::status(app)?,
        Command::Reconcile => {
            let notes = reconcile::reconcile(app)?;
            reconcile::after_change(app)?;
            if notes.is_empty() {
                "in sync\n".into()
            } else {
                notes.join("\n") + "\n"
            }
        }
        Command::Purge { .. } | Command::Daemon { .. } => unreachable!("handled in run"),
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
