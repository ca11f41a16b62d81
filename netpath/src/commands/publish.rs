//! Owns `netpath publish`, `unpublish` and `port`, and the published-port steps of endpoint
//! create/rm/disconnect and reconcile. The host (addresses, listening sockets) is read once per
//! command, a batch is planned by `ports` and recorded in one store transaction, then
//! `NP_PORTS` gets one update per entry; no per-mapping netlink call or file read.
use std::{
    collections::HashMap,
    io::Read as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    app::{App, AppError, Result},
    cli::EndpointCreateArgs,
    model::{Endpoint, PublishedPortRecord},
    ports::{self, HostSockets, HostView, PortPicker, PortSpec, PortsError},
    store::StoreTxn,
    sys,
};

/// A refused publish as the command's error: what the user must change is a conflict (port
/// taken), a missing thing, or bad input.
fn user_error(e: PortsError) -> AppError {
    let message = e.to_string();
    match e.innermost() {
        PortsError::AlreadyPublished { .. }
        | PortsError::Overlaps { .. }
        | PortsError::InUseOnHost { .. }
        | PortsError::NoFreePort { .. }
        | PortsError::TooMany { .. } => AppError::Conflict(message),
        PortsError::UnknownContainerIp { .. }
        | PortsError::UnknownEndpoint { .. }
        | PortsError::NotPublished { .. } => AppError::NotFound(message),
        _ => AppError::Invalid(message),
    }
}

/// Reads the host once: its IPv4 addresses (netlink) and the sockets of /proc/net/*, which
/// describe the namespace of this process, the served one.
fn host_view(app: &App) -> Result<HostView> {
    let addresses = app
        .block_on(app.nl().ipv4_addresses(None))?
        .into_iter()
        .map(|(_, addr, _)| addr)
        .collect();
    // tcp6/udp6 are absent when IPv6 is disabled: no sockets there.
    let read =
        |name: &str| std::fs::read_to_string(format!("/proc/net/{name}")).unwrap_or_default();
    let sockets = HostSockets::from_proc(&read("tcp"), &read("udp"), &read("tcp6"), &read("udp6"));
    Ok(HostView {
        addresses,
        sockets,
        random_ports: app.config.published_ports,
        default_ip: app.config.default_host_ip,
    })
}

fn picker() -> PortPicker {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    PortPicker::new(nanos ^ (u64::from(std::process::id()) << 32))
}

/// The mappings of the command line and of `-f FILE` (`-` = stdin), in that order.
fn read_specs(mappings: &[String], file: Option<&Path>) -> Result<Vec<PortSpec>> {
    let mut specs = mappings
        .iter()
        .map(|m| ports::parse_publish(m))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(user_error)?;
    if let Some(path) = file {
        let name = path.display().to_string();
        let io = |source| AppError::Io {
            what: format!("read mappings from {name}"),
            source,
        };
        let text = if name == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(io)?;
            text
        } else {
            std::fs::read_to_string(path).map_err(io)?
        };
        specs.extend(ports::parse_publish_file(&name, &text).map_err(user_error)?);
    }
    Ok(specs)
}

/// Plans `specs` against the stored records and endpoints and records the result, in one
/// transaction: all of the batch or, on any error, nothing.
fn record_batch(
    app: &App,
    specs: &[PortSpec],
    host: &HostView,
    picker: &mut PortPicker,
) -> Result<Vec<PublishedPortRecord>> {
    app.store.transaction(|tx| {
        let planned = plan_in(tx, specs, host, picker)?;
        tx.put_published_ports(&planned)?;
        Ok(planned)
    })
}

/// Plans `specs` inside a store transaction. When the batch names its host ports, only the
/// stored records on those ports are read, by key (plus the table's size for the `NP_PORTS`
/// check), so one publish costs the same with 10 or 10,000 ports stored; a batch with random
/// host ports or very many ports reads every record.
fn plan_in(
    tx: &StoreTxn<'_>,
    specs: &[PortSpec],
    host: &HostView,
    picker: &mut PortPicker,
) -> Result<Vec<PublishedPortRecord>> {
    let endpoints = tx.endpoints()?;
    match ports::ports_to_check(specs) {
        Some(keys) => {
            let nearby = tx.published_ports_at(&keys)?;
            let stored = ports::Stored {
                records: &nearby,
                entries: tx.published_port_entries()?,
            };
            ports::plan_publish_among(specs, stored, &endpoints, host, picker)
        }
        None => {
            let existing = tx.published_ports()?;
            ports::plan_publish(specs, &existing, &endpoints, host, picker)
        }
    }
    .map_err(user_error)
}

/// `netpath publish MAPPING… [-f FILE]`: one batch, all or nothing. Returns the new records.
pub fn publish(
    app: &mut App,
    mappings: &[String],
    file: Option<&Path>,
) -> Result<Vec<PublishedPortRecord>> {
    let specs = read_specs(mappings, file)?;
    if specs.is_empty() {
        return Err(AppError::Invalid(
            "nothing to publish: give MAPPING arguments or a -f FILE with one mapping per line"
                .into(),
        ));
    }
    let host = host_view(app)?;
    let planned = record_batch(app, &specs, &host, &mut picker())?;
    sys::crash_point("publish-recorded");
    if let Err(e) = install(app, &planned) {
        forget(app, &planned)?;
        return Err(e);
    }
    Ok(planned)
}

/// `netpath unpublish MAPPING… [-f FILE]` or `--endpoint NAME`: the records go first (the
/// store is the truth), then their `NP_PORTS` entries, so new connections stop at once.
/// Established connections keep their conntrack entries and drain.
pub fn unpublish(
    app: &mut App,
    mappings: &[String],
    file: Option<&Path>,
    endpoint: Option<&str>,
) -> Result<Vec<PublishedPortRecord>> {
    let existing = app.store.published_ports()?;
    let removed = match endpoint {
        Some(name) => {
            let mine: Vec<PublishedPortRecord> = existing
                .into_iter()
                .filter(|r| r.endpoint == name)
                .collect();
            if mine.is_empty() && app.store.endpoint(name)?.is_none() {
                return Err(AppError::NotFound(format!(
                    "endpoint {name} not found; check `netpath endpoint ls`"
                )));
            }
            mine
        }
        None => {
            let specs = read_specs(mappings, file)?;
            if specs.is_empty() {
                return Err(AppError::Invalid(
                    "nothing to unpublish: give MAPPING arguments, -f FILE or --endpoint NAME"
                        .into(),
                ));
            }
            let endpoints = app.store.endpoints()?;
            ports::plan_unpublish(&specs, &existing, &endpoints, app.config.default_host_ip)
                .map_err(user_error)?
        }
    };
    forget(app, &removed)?;
    sys::crash_point("unpublish-recorded");
    uninstall(app, &removed)?;
    Ok(removed)
}

/// `netpath port NAME [PORT[/PROTO]]` and `netpath port --all`, like `docker port`.
pub fn port(app: &App, name: Option<&str>, filter: Option<&str>) -> Result<String> {
    let records = app.store.published_ports()?;
    let Some(name) = name else {
        return Ok(ports::format_all_ports(&records));
    };
    if app.store.endpoint(name)?.is_none() {
        return Err(AppError::NotFound(format!(
            "endpoint {name} not found; check `netpath endpoint ls`"
        )));
    }
    let filter = filter
        .map(ports::parse_port_filter)
        .transpose()
        .map_err(user_error)?;
    ports::format_endpoint_ports(&records, name, filter).ok_or_else(|| {
        let (port, protocol) = filter.expect("only a filter can match nothing");
        AppError::NotFound(format!(
            "port {port}/{protocol} of endpoint {name} is not published; see `netpath port {name}`"
        ))
    })
}

/// One output line per mapping: `web 80/tcp -> 0.0.0.0:8080`.
pub fn describe(records: &[PublishedPortRecord]) -> String {
    records
        .iter()
        .map(|r| format!("{} {}\n", r.endpoint, ports::port_line(r)))
        .collect()
}

/// For `endpoint create`: the records `-p`/`-P`/`--expose` ask for, checked against the host
/// and the store before anything is made (`ep` is the planned, not yet stored, endpoint).
pub fn plan_for_new_endpoint(
    app: &App,
    ep: &Endpoint,
    args: &EndpointCreateArgs,
) -> Result<Vec<PublishedPortRecord>> {
    let specs = ports::endpoint_specs(&ep.name, &args.publish, args.publish_all, &args.expose)
        .map_err(user_error)?;
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let host = host_view(app)?;
    let existing = app.store.published_ports()?;
    let mut endpoints = app.store.endpoints()?;
    endpoints.push(ep.clone());
    ports::plan_publish(&specs, &existing, &endpoints, &host, &mut picker()).map_err(user_error)
}

/// Stored records of `endpoint` (on `network` only, when given).
pub fn records_of(
    app: &App,
    endpoint: &str,
    network: Option<&str>,
) -> Result<Vec<PublishedPortRecord>> {
    Ok(app
        .store
        .published_ports()?
        .into_iter()
        .filter(|r| r.endpoint == endpoint && network.is_none_or(|n| r.network == n))
        .collect())
}

/// Deletes records in one transaction.
fn forget(app: &App, records: &[PublishedPortRecord]) -> Result<()> {
    let keys: Vec<String> = records.iter().map(|r| r.store_key()).collect();
    app.store
        .write(|tx| tx.delete_published_ports(keys.iter().map(String::as_str)))?;
    Ok(())
}

/// Where every endpoint is now: the stored endpoints and one netlink dump of the devices.
struct Whereabouts {
    endpoints: Vec<Endpoint>,
    links: HashMap<String, u32>,
}

impl Whereabouts {
    fn read(app: &App) -> Result<Self> {
        Ok(Self {
            endpoints: app.store.endpoints()?,
            links: app
                .block_on(app.nl().links())?
                .into_iter()
                .map(|l| (l.name, l.index))
                .collect(),
        })
    }

    /// A locator for `ports`: the record's endpoint address and veth ifindex.
    fn locator(&self) -> impl Fn(&PublishedPortRecord) -> Option<ports::Location> + '_ {
        let by_name: HashMap<&str, &Endpoint> = self
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        move |r| ports::locate(r, &by_name, |name| self.links.get(name).copied())
    }
}

fn apply(app: &mut App, changes: &[ports::PortChange]) -> Result<()> {
    let (_, maps) = app.datapath()?;
    for change in changes {
        match change {
            ports::PortChange::Put(key, value) => maps.put_port(key, value)?,
            ports::PortChange::Remove(key) => maps.remove_port(key)?,
        }
    }
    Ok(())
}

/// Writes the `NP_PORTS` entries of records just stored (and the guard entries of their
/// endpoint ports). All or nothing: on a failure the records are deleted again and the map
/// is put back as the store then says.
pub fn install(app: &mut App, records: &[PublishedPortRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let result = (|| {
        let now = Whereabouts::read(app)?;
        let locate = now.locator();
        if let Some(r) = records
            .iter()
            .find(|r| !matches!(locate(r), Some((_, Some(_)))))
        {
            return Err(AppError::Conflict(format!(
                "endpoint {} has no interface on network {} right now; run `netpath reconcile` and retry",
                r.endpoint, r.network
            )));
        }
        // The records just stored are all `changes_after` needs unless a guard entry may
        // change; then it reads every record.
        let after = if ports::touches_guards(records, &app.store.published_ports_on_loopback()?) {
            app.store.published_ports()?
        } else {
            records.to_vec()
        };
        let changes = ports::changes_after(records, &after, locate);
        drop(now);
        apply(app, &changes)
    })();
    if let Err(e) = result {
        forget(app, records)?;
        let _ = refresh(app, records);
        return Err(e);
    }
    Ok(())
}

/// Removes the `NP_PORTS` entries of records just deleted from the store (and brings the
/// guard entries of their endpoint ports in line).
pub fn uninstall(app: &mut App, records: &[PublishedPortRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    refresh(app, records)
}

/// Makes the entries `records` touch match the store.
fn refresh(app: &mut App, records: &[PublishedPortRecord]) -> Result<()> {
    let now = Whereabouts::read(app)?;
    let after = app.store.published_ports()?;
    let changes = ports::changes_after(records, &after, now.locator());
    apply(app, &changes)
}

/// Reconcile: makes `NP_PORTS` exactly what the stored records describe, with the endpoints'
/// addresses and veth ifindexes of now (reconcile may have recreated a veth). Records whose
/// endpoint or attachment no longer exists are deleted; entries no record owns are removed.
pub fn sync(app: &mut App) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let now = Whereabouts::read(app)?;
    let (live, orphans): (Vec<PublishedPortRecord>, Vec<PublishedPortRecord>) =
        app.store.published_ports()?.into_iter().partition(|r| {
            now.endpoints.iter().any(|e| {
                e.name == r.endpoint && e.attachments.iter().any(|a| a.network == r.network)
            })
        });
    if !orphans.is_empty() {
        forget(app, &orphans)?;
        for r in &orphans {
            notes.push(format!(
                "unpublished {} of endpoint {}: it is no longer on network {}",
                r.store_key(),
                r.endpoint,
                r.network
            ));
        }
    }
    // Records whose veth is missing get no entry; endpoint reconcile reports why.
    let desired = ports::desired_entries(&live, now.locator());
    drop(now);
    let current = app.datapath()?.1.port_entries();
    let changes = ports::diff_port_entries(&current, &desired);
    apply(app, &changes)?;
    let removed = changes
        .iter()
        .filter(|c| matches!(c, ports::PortChange::Remove(_)))
        .count();
    let written = changes.len() - removed;
    let entries = |n: usize| if n == 1 { "entry" } else { "entries" };
    if removed > 0 {
        notes.push(format!(
            "removed {removed} published-port datapath {} no record owns",
            entries(removed)
        ));
    }
    if written > 0 {
        notes.push(format!(
            "restored {written} published-port datapath {}",
            entries(written)
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::PathBuf};

    use super::*;
    use crate::{
        addr::MacAddr,
        config::PortRange,
        model::{Attachment, EndpointMode, Lifecycle, Protocol},
        store::{Store, StoreError},
    };

    /// A store in a directory removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("netpath-publish-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }

        fn store(&self) -> Store {
            Store::open(&self.0.join("state.redb")).expect("open")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn endpoint(name: &str, ip: &str) -> Endpoint {
        let ip: Ipv4Addr = ip.parse().expect("literal");
        Endpoint {
            name: name.into(),
            mode: EndpointMode::Bridge,
            netns: PathBuf::from(format!("/run/netns/{name}")),
            netns_owned: true,
            attachments: vec![Attachment {
                network: "bridge".into(),
                ip,
                mac: MacAddr::from_ipv4(ip),
                ifname: "eth0".into(),
                host_veth: format!("npv{name}"),
                state: Lifecycle::Ready,
            }],
            state: Lifecycle::Ready,
            created: 0,
        }
    }

    fn host() -> HostView {
        HostView {
            addresses: Default::default(),
            sockets: HostSockets::default(),
            random_ports: PortRange {
                first: 32768,
                last: 60999,
            },
            default_ip: Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The store half of `publish` without a session: plan and record in one transaction.
    fn record(store: &Store, specs: &[PortSpec]) -> Result<Vec<PublishedPortRecord>> {
        store.transaction(|tx| {
            let planned = plan_in(tx, specs, &host(), &mut PortPicker::new(1))?;
            tx.put_published_ports(&planned)?;
            Ok(planned)
        })
    }

    fn lines(n: usize, bad_at: Option<usize>) -> String {
        (0..n)
            .map(|i| {
                if Some(i) == bad_at {
                    // Claims the port of line 0 again.
                    "10000:web:80\n".to_string()
                } else {
                    format!(
                        "{}:{}:{}\n",
                        10_000 + i,
                        if i % 2 == 0 { "web" } else { "db" },
                        80
                    )
                }
            })
            .collect()
    }

    #[test]
    fn port_records_round_trip_through_the_store() {
        let dir = Scratch::new("roundtrip");
        let store = dir.store();
        store
            .write(|tx| tx.put_endpoint(&endpoint("web", "172.17.0.2")))
            .expect("endpoint");
        let specs = [
            ports::parse_publish("127.0.0.1:5000:172.17.0.2:5000/udp").expect("valid"),
            ports::parse_publish("8080:web:80").expect("valid"),
        ];
        let planned = record(&store, &specs).expect("recorded");
        let mut stored = store.published_ports().expect("read");
        assert_eq!(stored.len(), 2);
        stored.sort_by_key(|r| r.host_port);
        assert_eq!(
            stored[0],
            PublishedPortRecord {
                host_ip: "127.0.0.1".parse().expect("literal"),
                host_port: 5000,
                protocol: Protocol::Udp,
                endpoint: "web".into(),
                network: "bridge".into(),
                container_port: 5000,
            }
        );
        assert!(planned.contains(&stored[1]));
        drop(store);
        let store = dir.store();
        assert_eq!(store.published_ports().expect("reopen").len(), 2);
        let removed = store
            .write(|tx| tx.delete_published_ports(["0.0.0.0:8080/tcp", "0.0.0.0:1/tcp"]))
            .expect("delete");
        assert_eq!(removed, 1);
        assert_eq!(
            store
                .published_ports()
                .expect("read")
                .iter()
                .map(|r| r.store_key())
                .collect::<Vec<_>>(),
            ["127.0.0.1:5000/udp"]
        );
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let dir = Scratch::new("batch");
        let store = dir.store();
        store
            .write(|tx| {
                tx.put_endpoint(&endpoint("web", "172.17.0.2"))?;
                tx.put_endpoint(&endpoint("db", "172.17.0.3"))
            })
            .expect("endpoints");

        // A conflict in the middle of 10,000 lines: nothing is stored.
        let specs = ports::parse_publish_file("big", &lines(10_000, Some(5_000))).expect("parses");
        let err = record(&store, &specs).expect_err("line 5001 conflicts");
        assert_eq!(
            err.to_string(),
            "big line 5001: 0.0.0.0:10000/tcp is already published for web:80; unpublish it first or choose another host port"
        );
        assert!(matches!(err, AppError::Conflict(_)));
        assert!(store.published_ports().expect("read").is_empty());

        // A failure while writing the batch (half of it written): nothing is stored either.
        let specs = ports::parse_publish_file("big", &lines(10_000, None)).expect("parses");
        let planned = ports::plan_publish(
            &specs,
            &[],
            &store.endpoints().expect("read"),
            &host(),
            &mut PortPicker::new(1),
        )
        .expect("plan");
        let failed: std::result::Result<(), StoreError> = store.write(|tx| {
            tx.put_published_ports(&planned[..5_000])?;
            tx.set_meta("schema_version", "9")
        });
        assert!(failed.is_err());
        assert!(store.published_ports().expect("read").is_empty());

        // The whole batch in one transaction, well under a second even unoptimized.
        let start = std::time::Instant::now();
        let recorded = record(&store, &specs).expect("recorded");
        let took = start.elapsed();
        assert_eq!(recorded.len(), 10_000);
        assert_eq!(store.published_ports().expect("read").len(), 10_000);
        assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn the_keyed_conflict_check_catches_what_reading_every_record_does() {
        let dir = Scratch::new("keyed");
        let store = dir.store();
        let host = HostView {
            // 10.77.0.1 is a prefix of 10.77.0.12: both must be found.
            addresses: ["10.77.0.1", "10.77.0.12"]
                .iter()
                .map(|a| a.parse().expect("literal"))
                .collect(),
            ..host()
        };
        let text = |lines: &[&str]| lines.join("\n");
        let specs = |t: &str| ports::parse_publish_file("t", t).expect("parses");
        store
            .write(|tx| {
                tx.put_endpoint(&endpoint("web", "172.17.0.2"))?;
                tx.put_endpoint(&endpoint("db", "172.17.0.3"))
            })
            .expect("endpoints");
        let stored = text(&[
            "8080:web:80",
            "127.0.0.1:9090:db:90",
            "10.77.0.1:7000:web:70",
            "10.77.0.12:7001:web:71",
            "5353:db:53/udp",
        ]);
        // Plus 3,000 more, so reading every record would show in the cost.
        let filler: String = (0..3_000)
            .map(|i| format!("{}:db:{}\n", 40_000 + i, 1 + i))
            .collect();
        let mut picker = PortPicker::new(1);
        store
            .transaction(|tx| {
                let planned = plan_in(tx, &specs(&(stored + "\n" + &filler)), &host, &mut picker)?;
                tx.put_published_ports(&planned).map_err(AppError::from)
            })
            .expect("stored");
        let all = store.published_ports().expect("read");
        assert_eq!(all.len(), 3_005);

        // Keyed reads find every address on a port and nothing else.
        let at = |keys: &[(Protocol, u16)]| {
            let mut found: Vec<String> = store
                .transaction(|tx| tx.published_ports_at(keys))
                .expect("read by key")
                .iter()
                .map(|r| r.store_key())
                .collect();
            found.sort();
            found
        };
        assert_eq!(at(&[(Protocol::Tcp, 8080)]), ["0.0.0.0:8080/tcp"]);
        assert_eq!(
            at(&[
                (Protocol::Tcp, 7000),
                (Protocol::Tcp, 7001),
                (Protocol::Udp, 7000)
            ]),
            // Sorted as text.
            ["10.77.0.12:7001/tcp", "10.77.0.1:7000/tcp"]
        );
        assert!(at(&[(Protocol::Udp, 8080), (Protocol::Tcp, 5353)]).is_empty());

        let keyed = |t: &str| {
            let specs = specs(t);
            assert!(
                ports::ports_to_check(&specs).is_some(),
                "{t} is planned by key"
            );
            store.transaction(|tx| plan_in(tx, &specs, &host, &mut PortPicker::new(1)))
        };
        let full = |t: &str| {
            ports::plan_publish(
                &specs(t),
                &all,
                &store.endpoints().expect("read"),
                &host,
                &mut PortPicker::new(1),
            )
        };
        let refused = [
            // Same address and port.
            (
                "8080:172.17.0.3:80",
                "t line 1: 0.0.0.0:8080/tcp is already published for web:80; unpublish it first or choose another host port",
            ),
            (
                "10.77.0.12:7001:db:80",
                "t line 1: 10.77.0.12:7001/tcp is already published for web:71; unpublish it first or choose another host port",
            ),
            // A specific address under a stored wildcard.
            (
                "127.0.0.1:8080:db:80",
                "t line 1: 127.0.0.1:8080/tcp overlaps 0.0.0.0:8080/tcp, already published for web:80; unpublish that first or choose another host port",
            ),
            // The wildcard over a stored specific address (loopback, and a host address).
            (
                "9090:web:80",
                "t line 1: 0.0.0.0:9090/tcp overlaps 127.0.0.1:9090/tcp, already published for db:90; unpublish that first or choose another host port",
            ),
            (
                "0.0.0.0:7000:db:80",
                "t line 1: 0.0.0.0:7000/tcp overlaps 10.77.0.1:7000/tcp, already published for web:70; unpublish that first or choose another host port",
            ),
            // Ranges: the overlapping port inside them is found.
            (
                "8078-8082:web:80-84",
                "t line 1: 0.0.0.0:8080/tcp is already published for web:80; unpublish it first or choose another host port",
            ),
            (
                "127.0.0.1:9088-9092:db:80-84",
                "t line 1: 127.0.0.1:9090/tcp is already published for db:90; unpublish it first or choose another host port",
            ),
            (
                "5350-5360:web:50-60/udp",
                "t line 1: 0.0.0.0:5353/udp is already published for db:53; unpublish it first or choose another host port",
            ),
            // Inside the batch, too.
            (
                "6000-6002:web:80-82\n127.0.0.1:6001:db:80",
                "t line 2: 127.0.0.1:6001/tcp overlaps 0.0.0.0:6001/tcp, already published for web:81; unpublish that first or choose another host port",
            ),
        ];
        for (t, expected) in refused {
            let err = keyed(t).expect_err(t);
            assert_eq!(err.to_string(), expected, "{t}");
            assert!(matches!(err, AppError::Conflict(_)), "{t}");
            assert_eq!(
                user_error(full(t).expect_err(t)).to_string(),
                expected,
                "{t}: the full check agrees"
            );
        }
        let accepted = [
            // Other protocol on a taken port, both ways.
            "8080:web:80/udp",
            "5353:web:53",
            // Another specific address where only specific addresses hold the port.
            "10.77.0.12:7000:db:80",
            "10.77.0.1:9090:db:80",
            // A range just past the taken ports.
            "8081-8090:web:81-90",
            "127.0.0.1:7002-7010:db:80",
            // A host range for one container port takes its first free port: 5354.
            "5353-5354:web:53/udp",
        ];
        for t in accepted {
            assert_eq!(
                keyed(t).expect(t),
                full(t).expect(t),
                "{t}: the same records either way"
            );
        }
        assert_eq!(
            keyed("5353-5354:web:53/udp").expect("planned")[0].host_port,
            5354
        );
        // Nothing of the refused or accepted plans was stored.
        assert_eq!(store.published_ports().expect("read").len(), 3_005);
    }
}
