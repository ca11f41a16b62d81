//! Owns the embedded, crash-safe state store (one redb file per instance): networks,
//! endpoints, bridge attachments, published ports, meta values and counters, read directly or changed in
//! atomic write transactions. Records are JSON of the `model` types, keyed by name.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

use crate::{
    ipam,
    model::{BridgeAttachment, Endpoint, Network, Protocol, PublishedPortRecord},
};

/// Why the store could not be opened, read or written.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create state directory {}: {source}; check that it is writable (netpath runs as root)", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("state store {} is in use by another netpath process; wait for it to finish and retry", path.display())]
    InUse { path: PathBuf },
    #[error("cannot open state store {}: {source}; check the file and disk, or move the file aside to start from empty state", path.display())]
    Open {
        path: PathBuf,
        source: DatabaseError,
    },
    #[error("state store {} failed: {source}; check the disk (space, permissions) and retry", path.display())]
    Database { path: PathBuf, source: redb::Error },
    #[error("record {key:?} in table {table} of state store {} is unreadable ({source}); remove it with `netpath purge --force` or restore the file from a backup", path.display())]
    CorruptRecord {
        path: PathBuf,
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("state store {} has schema version {found}, newer than this netpath understands ({SCHEMA_VERSION}); use a newer netpath", path.display())]
    SchemaTooNew { path: PathBuf, found: u32 },
    #[error("state store {} has an unreadable schema version {found:?}; restore the file from a backup or move it aside", path.display())]
    BadSchemaVersion { path: PathBuf, found: String },
    #[error(
        "cannot encode {what} for the state store: {source}; this is a bug in netpath, please report it"
    )]
    Encode {
        what: String,
        source: serde_json::Error,
    },
    #[error("meta key {key:?} belongs to the store itself; use another key")]
    ReservedMetaKey { key: String },
    #[error("network ids are used up in state store {}; move the file aside and recreate the networks", path.display())]
    NetworkIdsExhausted { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Version of the record layout this netpath writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
/// How long [`Store::open`] waits for another netpath process to let go of the file.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

const NETWORKS: TableDefinition<&str, &str> = TableDefinition::new("networks");
const ENDPOINTS: TableDefinition<&str, &str> = TableDefinition::new("endpoints");
const BRIDGE_ATTACHMENTS: TableDefinition<&str, &str> = TableDefinition::new("bridge_attachments");
/// Published ports keyed by [`PublishedPortRecord::store_key`]; added without a schema bump
/// because older stores simply get the empty table on open.
const PUBLISHED_PORTS: TableDefinition<&str, &str> = TableDefinition::new("published_ports");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const META_SCHEMA_VERSION: &str = "schema_version";
const COUNTER_NEXT_NETWORK_ID: &str = "next_network_id";
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Attaches the store's path to any redb error.
trait InStore<T> {
    fn in_store(self, path: &Path) -> Result<T>;
}

impl<T, E: Into<redb::Error>> InStore<T> for std::result::Result<T, E> {
    fn in_store(self, path: &Path) -> Result<T> {
        self.map_err(|e| StoreError::Database {
            path: path.to_path_buf(),
            source: e.into(),
        })
    }
}

/// The open state store. Holding it holds redb's file lock, so one process at a time.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating file and parent directories when missing) the store at `path`, waiting
    /// up to [`DEFAULT_LOCK_WAIT`] for another process that has it open.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_wait(path, DEFAULT_LOCK_WAIT)
    }

    /// [`Store::open`] with a chosen wait for the file lock.
    pub fn open_with_wait(path: &Path, wait: Duration) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let deadline = Instant::now() + wait;
        let mut told = false;
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    if !told {
                        log::info!(
                            "state store {} is in use by another netpath process; waiting up to {wait:?}",
                            path.display()
                        );
                        told = true;
                    }
                    thread::sleep(LOCK_RETRY_INTERVAL);
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        store.prepare()?;
        Ok(store)
    }

    /// Creates the tables of a new file and checks the schema version of an existing one.
    fn prepare(&self) -> Result<()> {
        self.write(|tx| {
            for table in [
                NETWORKS,
                ENDPOINTS,
                BRIDGE_ATTACHMENTS,
                PUBLISHED_PORTS,
                META,
            ] {
                tx.txn.open_table(table).in_store(tx.path)?;
            }
            tx.txn.open_table(COUNTERS).in_store(tx.path)?;
            match tx.meta(META_SCHEMA_VERSION)? {
                None => tx.put_meta(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_string()),
                Some(text) => match text.parse::<u32>() {
                    Ok(found) if found > SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
                        path: tx.path.to_path_buf(),
                        found,
                    }),
                    Ok(_) => Ok(()),
                    Err(_) => Err(StoreError::BadSchemaVersion {
                        path: tx.path.to_path_buf(),
                        found: text,
                    }),
                },
            }
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction: everything it did is committed (durably, fsync)
    /// when it returns `Ok`, and nothing when it returns `Err` or panics.
    pub fn write<T>(&self, f: impl FnOnce(&mut StoreTxn<'_>) -> Result<T>) -> Result<T> {
        self.transaction(f)
    }

    /// [`Store::write`] without its own fsync: the change becomes durable with the next
    /// [`Store::write`] (redb persists earlier commits with a later durable one), or is lost in
    /// a crash before that. For bookkeeping whose loss is harmless, like clearing the
    /// in-progress marker of a command that succeeded.
    pub fn write_lazily<T>(&self, f: impl FnOnce(&mut StoreTxn<'_>) -> Result<T>) -> Result<T> {
        self.commit(f, redb::Durability::None)
    }

    /// [`Store::write`] for a closure that fails with the caller's own error type, e.g. to
    /// refuse a change after reading inside the same transaction.
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut StoreTxn<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.commit(f, redb::Durability::Immediate)
    }

    fn commit<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut StoreTxn<'_>) -> std::result::Result<T, E>,
        durability: redb::Durability,
    ) -> std::result::Result<T, E> {
        let mut txn = self.db.begin_write().in_store(&self.path)?;
        txn.set_durability(durability).in_store(&self.path)?;
        let mut tx = StoreTxn {
            txn,
            path: &self.path,
        };
        match f(&mut tx) {
            Ok(value) => {
                tx.txn.commit().in_store(&self.path)?;
                Ok(value)
            }
            Err(e) => {
                // The closure's error is the one worth reporting; a failed abort leaves nothing
                // committed either.
                let _ = tx.txn.abort();
                Err(e)
            }
        }
    }

    /// All networks, sorted by name.
    pub fn networks(&self) -> Result<Vec<Network>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        all_records(
            &txn.open_table(NETWORKS).in_store(&self.path)?,
            "networks",
            &self.path,
        )
    }

    pub fn network(&self, name: &str) -> Result<Option<Network>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        one_record(
            &txn.open_table(NETWORKS).in_store(&self.path)?,
            "networks",
            name,
            &self.path,
        )
    }

    /// All endpoints, sorted by name.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        all_records(
            &txn.open_table(ENDPOINTS).in_store(&self.path)?,
            "endpoints",
            &self.path,
        )
    }

    pub fn endpoint(&self, name: &str) -> Result<Option<Endpoint>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        one_record(
            &txn.open_table(ENDPOINTS).in_store(&self.path)?,
            "endpoints",
            name,
            &self.path,
        )
    }

    /// All bridge attachments, sorted by namespace path.
    pub fn bridge_attachments(&self) -> Result<Vec<BridgeAttachment>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        all_records(
            &txn.open_table(BRIDGE_ATTACHMENTS).in_store(&self.path)?,
            "bridge_attachments",
            &self.path,
        )
    }

    /// All published ports, sorted by key (host address, port, protocol).
    pub fn published_ports(&self) -> Result<Vec<PublishedPortRecord>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        all_records(
            &txn.open_table(PUBLISHED_PORTS).in_store(&self.path)?,
            "published_ports",
            &self.path,
        )
    }

    /// The published ports on IPv4 loopback addresses (host-only), read by key range.
    pub fn published_ports_on_loopback(&self) -> Result<Vec<PublishedPortRecord>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        loopback_ports(
            &txn.open_table(PUBLISHED_PORTS).in_store(&self.path)?,
            &self.path,
        )
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read().in_store(&self.path)?;
        let table = txn.open_table(META).in_store(&self.path)?;
        Ok(table
            .get(key)
            .in_store(&self.path)?
            .map(|v| v.value().to_string()))
    }

    /// Addresses on `network` held by endpoint records in any lifecycle state, with the
    /// owning endpoint's name: what IPAM must not hand out.
    pub fn used_addresses(&self, network: &str) -> Result<BTreeMap<Ipv4Addr, String>> {
        Ok(ipam::addresses_in_use(network, &self.endpoints()?))
    }
}

/// An open write transaction; see [`Store::write`]. Reads see the transaction's own writes.
pub struct StoreTxn<'s> {
    txn: WriteTransaction,
    path: &'s Path,
}

impl StoreTxn<'_> {
    pub fn put_network(&mut self, network: &Network) -> Result<()> {
        self.put(NETWORKS, &network.name, network, "network")
    }

    /// Returns whether there was such a network.
    pub fn delete_network(&mut self, name: &str) -> Result<bool> {
        self.delete(NETWORKS, name)
    }

    pub fn put_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        self.put(ENDPOINTS, &endpoint.name, endpoint, "endpoint")
    }

    /// Returns whether there was such an endpoint.
    pub fn delete_endpoint(&mut self, name: &str) -> Result<bool> {
        self.delete(ENDPOINTS, name)
    }

    /// Keyed by [`BridgeAttachment::store_key`] (the namespace path).
    pub fn put_bridge_attachment(&mut self, attachment: &BridgeAttachment) -> Result<()> {
        self.put(
            BRIDGE_ATTACHMENTS,
            &attachment.store_key(),
            attachment,
            "bridge attachment",
        )
    }

    /// `netns` is the namespace path as text ([`BridgeAttachment::store_key`]). Returns
    /// whether there was such an attachment.
    pub fn delete_bridge_attachment(&mut self, netns: &str) -> Result<bool> {
        self.delete(BRIDGE_ATTACHMENTS, netns)
    }

    /// Keyed by [`PublishedPortRecord::store_key`]: one record per host port, so a second
    /// put for the same host port replaces the first (callers check ownership before).
    pub fn put_published_port(&mut self, record: &PublishedPortRecord) -> Result<()> {
        self.put(
            PUBLISHED_PORTS,
            &record.store_key(),
            record,
            "published port",
        )
    }

    /// `key` is [`PublishedPortRecord::store_key`]. Returns whether there was such a record.
    pub fn delete_published_port(&mut self, key: &str) -> Result<bool> {
        self.delete(PUBLISHED_PORTS, key)
    }

    /// [`StoreTxn::put_published_port`] for a whole batch, opening the table once.
    pub fn put_published_ports(&mut self, records: &[PublishedPortRecord]) -> Result<()> {
        let mut table = self.txn.open_table(PUBLISHED_PORTS).in_store(self.path)?;
        for record in records {
            let key = record.store_key();
            let json = serde_json::to_string(record).map_err(|source| StoreError::Encode {
                what: format!("published port {key}"),
                source,
            })?;
            table
                .insert(key.as_str(), json.as_str())
                .in_store(self.path)?;
        }
        Ok(())
    }

    /// [`StoreTxn::delete_published_port`] for a whole batch; returns how many existed.
    pub fn delete_published_ports<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<usize> {
        let mut table = self.txn.open_table(PUBLISHED_PORTS).in_store(self.path)?;
        let mut removed = 0;
        for key in keys {
            if table.remove(key).in_store(self.path)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn published_ports(&self) -> Result<Vec<PublishedPortRecord>> {
        all_records(
            &self.txn.open_table(PUBLISHED_PORTS).in_store(self.path)?,
            "published_ports",
            self.path,
        )
    }

    /// Every stored published port whose (protocol, host port) is one of `ports`, on any host
    /// address, read by key: per port one exact lookup for each host address in use (the
    /// wildcard, loopback, the host's own), so the cost does not grow with the table.
    pub fn published_ports_at(
        &self,
        ports: &[(Protocol, u16)],
    ) -> Result<Vec<PublishedPortRecord>> {
        let table = self.txn.open_table(PUBLISHED_PORTS).in_store(self.path)?;
        let addresses = port_addresses(&table, self.path)?;
        let mut records = Vec::new();
        for (protocol, port) in ports {
            for address in &addresses {
                let key = format!("{address}:{port}/{protocol}");
                records.extend(one_record(&table, "published_ports", &key, self.path)?);
            }
        }
        Ok(records)
    }

    /// How many `NP_PORTS` entries the stored published ports may take
    /// ([`crate::ports::entries_needed`] of all of them), without reading every record.
    pub fn published_port_entries(&self) -> Result<usize> {
        let table = self.txn.open_table(PUBLISHED_PORTS).in_store(self.path)?;
        let records = usize::try_from(table.len().in_store(self.path)?).unwrap_or(usize::MAX);
        Ok(records.saturating_add(loopback_ports(&table, self.path)?.len()))
    }

    /// Sets a meta value (e.g. the namespace the instance serves). `schema_version` is the
    /// store's own and refused.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        if key == META_SCHEMA_VERSION {
            return Err(StoreError::ReservedMetaKey {
                key: key.to_string(),
            });
        }
        self.put_meta(key, value)
    }

    /// Removes a meta value; returns whether it existed. `schema_version` is refused.
    pub fn delete_meta(&mut self, key: &str) -> Result<bool> {
        if key == META_SCHEMA_VERSION {
            return Err(StoreError::ReservedMetaKey {
                key: key.to_string(),
            });
        }
        let mut table = self.txn.open_table(META).in_store(self.path)?;
        let existed = table.remove(key).in_store(self.path)?.is_some();
        Ok(existed)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        let mut table = self.txn.open_table(META).in_store(self.path)?;
        table.insert(key, value).in_store(self.path)?;
        Ok(())
    }

    /// The next network id: starts at 1, only ever grows, never handed out twice (also not
    /// after the network is deleted or the store reopened).
    pub fn next_network_id(&mut self) -> Result<u32> {
        let mut table = self.txn.open_table(COUNTERS).in_store(self.path)?;
        let next = table
            .get(COUNTER_NEXT_NETWORK_ID)
            .in_store(self.path)?
            .map(|v| v.value())
            .unwrap_or(1);
        let id = u32::try_from(next).map_err(|_| StoreError::NetworkIdsExhausted {
            path: self.path.to_path_buf(),
        })?;
        table
            .insert(COUNTER_NEXT_NETWORK_ID, next + 1)
            .in_store(self.path)?;
        Ok(id)
    }

    pub fn network(&self, name: &str) -> Result<Option<Network>> {
        one_record(
            &self.txn.open_table(NETWORKS).in_store(self.path)?,
            "networks",
            name,
            self.path,
        )
    }

    pub fn networks(&self) -> Result<Vec<Network>> {
        all_records(
            &self.txn.open_table(NETWORKS).in_store(self.path)?,
            "networks",
            self.path,
        )
    }

    pub fn endpoint(&self, name: &str) -> Result<Option<Endpoint>> {
        one_record(
            &self.txn.open_table(ENDPOINTS).in_store(self.path)?,
            "endpoints",
            name,
            self.path,
        )
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        all_records(
            &self.txn.open_table(ENDPOINTS).in_store(self.path)?,
            "endpoints",
            self.path,
        )
    }

    pub fn bridge_attachments(&self) -> Result<Vec<BridgeAttachment>> {
        all_records(
            &self
                .txn
                .open_table(BRIDGE_ATTACHMENTS)
                .in_store(self.path)?,
            "bridge_attachments",
            self.path,
        )
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let table = self.txn.open_table(META).in_store(self.path)?;
        Ok(table
            .get(key)
            .in_store(self.path)?
            .map(|v| v.value().to_string()))
    }

    /// Like [`Store::used_addresses`], including this transaction's writes, so an address can
    /// be chosen and recorded in one atomic step.
    pub fn used_addresses(&self, network: &str) -> Result<BTreeMap<Ipv4Addr, String>> {
        Ok(ipam::addresses_in_use(network, &self.endpoints()?))
    }

    fn put<T: Serialize>(
        &mut self,
        table: TableDefinition<&str, &str>,
        key: &str,
        record: &T,
        what: &str,
    ) -> Result<()> {
        let json = serde_json::to_string(record).map_err(|source| StoreError::Encode {
            what: format!("{what} {key}"),
            source,
        })?;
        let mut table = self.txn.open_table(table).in_store(self.path)?;
        table.insert(key, json.as_str()).in_store(self.path)?;
        Ok(())
    }

    fn delete(&mut self, table: TableDefinition<&str, &str>, key: &str) -> Result<bool> {
        let mut table = self.txn.open_table(table).in_store(self.path)?;
        Ok(table.remove(key).in_store(self.path)?.is_some())
    }
}

fn decode<T: DeserializeOwned>(
    json: &str,
    table: &'static str,
    key: &str,
    path: &Path,
) -> Result<T> {
    serde_json::from_str(json).map_err(|source| StoreError::CorruptRecord {
        path: path.to_path_buf(),
        table,
        key: key.to_string(),
        source,
    })
}

fn one_record<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static str>,
    name: &'static str,
    key: &str,
    path: &Path,
) -> Result<Option<T>> {
    match table.get(key).in_store(path)? {
        Some(json) => decode(json.value(), name, key, path).map(Some),
        None => Ok(None),
    }
}

/// Every record of a table in key order (redb keeps `&str` keys sorted bytewise).
fn all_records<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static str>,
    name: &'static str,
    path: &Path,
) -> Result<Vec<T>> {
    let mut records = Vec::new();
    for entry in table.iter().in_store(path)? {
        let (key, json) = entry.in_store(path)?;
        records.push(decode(json.value(), name, key.value(), path)?);
    }
    Ok(records)
}

/// The host addresses of the stored published ports as their keys spell them (`0.0.0.0`,
/// `127.0.0.1`, `[::1]`), in key order. Keys are `ADDRESS:PORT/PROTOCOL`, so all keys of one
/// address sit together and the next address starts at or after `ADDRESS;` (`;` follows `:`):
/// one seek per distinct address, however many ports each holds.
fn port_addresses(
    table: &impl ReadableTable<&'static str, &'static str>,
    path: &Path,
) -> Result<Vec<String>> {
    let mut addresses = Vec::new();
    let mut from = String::new();
    loop {
        let next = table
            .range::<&str>(from.as_str()..)
            .in_store(path)?
            .next()
            .transpose()
            .in_store(path)?;
        let Some((key, _)) = next else {
            return Ok(addresses);
        };
        let key = key.value();
        match key.rsplit_once(':') {
            Some((address, _)) => {
                from = format!("{address};");
                addresses.push(address.to_string());
            }
            // Not a key netpath writes: step over it.
            None => from = format!("{key}\0"),
        }
    }
}

/// The published ports on IPv4 loopback addresses: the keys starting with `127.`.
fn loopback_ports(
    table: &impl ReadableTable<&'static str, &'static str>,
    path: &Path,
) -> Result<Vec<PublishedPortRecord>> {
    let mut records = Vec::new();
    // `/` follows `.`: the range holds exactly the keys that start with `127.`.
    for entry in table.range::<&str>("127.".."127/").in_store(path)? {
        let (key, json) = entry.in_store(path)?;
        records.push(decode(json.value(), "published_ports", key.value(), path)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        path::PathBuf,
        process::{Command, Stdio},
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;
    use crate::{
        addr::{Ipv4Cidr, MacAddr},
        model::{Attachment, EndpointMode, Lifecycle},
    };

    /// A directory removed when the test ends, pass or fail.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "netpath-store-{test}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }

        /// Inside a directory that does not exist yet, so `open` must create it.
        fn store_path(&self) -> PathBuf {
            self.0.join("state").join("state.redb")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn network(name: &str, subnet: &str) -> Network {
        let subnet: Ipv4Cidr = subnet.parse().expect("literal");
        Network {
            id: 0,
            name: name.into(),
            driver: "bridge".into(),
            subnet,
            gateway: ipam::default_gateway(subnet),
            ip_range: None,
            internal: false,
            icc: true,
            masquerade: true,
            mtu: 1500,
            bridge: format!("np-{name}"),
            bridge_external: false,
            created: 1_700_000_000,
        }
    }

    fn endpoint(name: &str, attachments: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            name: name.into(),
            mode: EndpointMode::Bridge,
            netns: PathBuf::from(format!("/run/netns/{name}")),
            netns_owned: true,
            attachments: attachments
                .iter()
                .enumerate()
                .map(|(i, (net, ip))| {
                    let ip: Ipv4Addr = ip.parse().expect("literal");
                    Attachment {
                        network: net.to_string(),
                        ip,
                        mac: MacAddr::from_ipv4(ip),
                        ifname: format!("eth{i}"),
                        host_veth: format!("npv{name}{i}"),
                        state: Lifecycle::Ready,
                    }
                })
                .collect(),
            state: Lifecycle::Ready,
            created: 1_700_000_001,
        }
    }

    fn bridge_attachment(netns: &str) -> BridgeAttachment {
        BridgeAttachment {
            bridge: "br-lan".into(),
            netns: PathBuf::from(netns),
            address: Ipv4Addr::new(192, 168, 1, 50),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
            host_veth: "npa00000001".into(),
            ifname: "eth1".into(),
            state: Lifecycle::Creating,
        }
    }

    #[test]
    fn a_new_store_is_empty() {
        let dir = Scratch::new("empty");
        let store = Store::open(&dir.store_path()).expect("open");
        assert!(store.networks().expect("read").is_empty());
        assert!(store.endpoints().expect("read").is_empty());
        assert!(store.bridge_attachments().expect("read").is_empty());
        assert_eq!(store.network("bridge").expect("read"), None);
        assert_eq!(store.meta("netns_inode").expect("read"), None);
        assert_eq!(
            store.meta("schema_version").expect("read").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = Scratch::new("roundtrip");
        let path = dir.store_path();
        let web = network("web", "172.18.0.0/16");
        let bridge = network("bridge", "172.17.0.0/16");
        let mut shared = endpoint("sidecar", &[]);
        shared.mode = EndpointMode::Container("app".into());
        let app = endpoint("app", &[("web", "172.18.0.2"), ("bridge", "172.17.0.2")]);
        let attached = bridge_attachment("/run/netns/lan host");
        {
            let store = Store::open(&path).expect("open");
            store
                .write(|tx| {
                    tx.put_network(&web)?;
                    tx.put_network(&bridge)?;
                    tx.put_endpoint(&app)?;
                    tx.put_endpoint(&shared)?;
                    tx.put_bridge_attachment(&attached)?;
                    tx.set_meta("netns_inode", "4026531840")
                })
                .expect("write");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.networks().expect("read"),
            vec![bridge.clone(), web.clone()],
            "sorted by name"
        );
        assert_eq!(store.network("web").expect("read"), Some(web));
        assert_eq!(
            store.endpoints().expect("read"),
            vec![app.clone(), shared.clone()]
        );
        assert_eq!(store.endpoint("sidecar").expect("read"), Some(shared));
        assert_eq!(
            store.bridge_attachments().expect("read"),
            vec![attached.clone()]
        );
        assert_eq!(
            store.meta("netns_inode").expect("read").as_deref(),
            Some("4026531840")
        );

        let mut changed = app.clone();
        changed.state = Lifecycle::Removing;
        let deleted = store
            .write(|tx| {
                tx.put_endpoint(&changed)?;
                Ok((
                    tx.delete_network("web")?,
                    tx.delete_network("web")?,
                    tx.delete_bridge_attachment(&attached.store_key())?,
                ))
            })
            .expect("write");
        assert_eq!(deleted, (true, false, true));
        assert_eq!(store.network("web").expect("read"), None);
        assert_eq!(store.endpoint("app").expect("read"), Some(changed));
        assert!(store.bridge_attachments().expect("read").is_empty());
    }

    #[test]
    fn a_failed_closure_commits_nothing() {
        let dir = Scratch::new("atomic");
        let store = Store::open(&dir.store_path()).expect("open");
        store
            .write(|tx| tx.put_network(&network("keep", "10.1.0.0/24")))
            .expect("write");
        let err = store
            .write(|tx| {
                tx.put_network(&network("lost", "10.2.0.0/24"))?;
                tx.delete_network("keep")?;
                tx.set_meta("k", "v")?;
                tx.next_network_id()?;
                tx.set_meta("schema_version", "2")
            })
            .expect_err("reserved key");
        assert!(matches!(err, StoreError::ReservedMetaKey { .. }), "{err}");
        assert_eq!(
            store.networks().expect("read"),
            vec![network("keep", "10.1.0.0/24")]
        );
        assert_eq!(store.meta("k").expect("read"), None);
        assert_eq!(
            store.write(|tx| tx.next_network_id()).expect("id"),
            1,
            "the aborted id was not consumed"
        );

        // The caller's own error type aborts as well.
        #[derive(Debug)]
        enum CallerError {
            Refused,
            Store(#[allow(dead_code)] StoreError),
        }
        impl From<StoreError> for CallerError {
            fn from(e: StoreError) -> Self {
                Self::Store(e)
            }
        }
        let result: std::result::Result<(), CallerError> = store.transaction(|tx| {
            tx.delete_network("keep")?;
            Err(CallerError::Refused)
        });
        assert!(matches!(result, Err(CallerError::Refused)));
        assert!(store.network("keep").expect("read").is_some());
    }

    #[test]
    fn a_panicking_closure_commits_nothing() {
        let dir = Scratch::new("panic");
        let store = Store::open(&dir.store_path()).expect("open");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.write(|tx| -> Result<()> {
                tx.put_network(&network("lost", "10.2.0.0/24"))?;
                panic!("interrupted");
            });
        }));
        assert!(outcome.is_err());
        assert!(store.networks().expect("read").is_empty());
    }

    #[test]
    fn reads_inside_a_transaction_see_its_writes() {
        let dir = Scratch::new("txnreads");
        let store = Store::open(&dir.store_path()).expect("open");
        store
            .write(|tx| tx.put_endpoint(&endpoint("a", &[("web", "172.18.0.2")])))
            .expect("write");
        store
            .write(|tx| {
                tx.put_network(&network("web", "172.18.0.0/16"))?;
                assert_eq!(tx.network("web")?.map(|n| n.name), Some("web".into()));
                assert_eq!(tx.networks()?.len(), 1);
                tx.put_endpoint(&endpoint("b", &[("web", "172.18.0.3")]))?;
                let used = tx.used_addresses("web")?;
                assert_eq!(
                    used.get(&Ipv4Addr::new(172, 18, 0, 3)).map(String::as_str),
                    Some("b")
                );
                assert_eq!(used.len(), 2);
                tx.delete_endpoint("a")?;
                assert_eq!(tx.endpoint("a")?, None);
                assert_eq!(tx.endpoints()?.len(), 1);
                tx.put_bridge_attachment(&bridge_attachment("/run/netns/x"))?;
                assert_eq!(tx.bridge_attachments()?.len(), 1);
                tx.set_meta("k", "v")?;
                assert_eq!(tx.meta("k")?.as_deref(), Some("v"));
                Ok(())
            })
            .expect("write");
        // Not visible to readers before commit is covered by a_failed_closure_commits_nothing;
        // after commit everything is.
        assert_eq!(store.endpoints().expect("read").len(), 1);
    }

    #[test]
    fn used_addresses_cover_every_lifecycle_state() {
        let dir = Scratch::new("used");
        let store = Store::open(&dir.store_path()).expect("open");
        let mut creating = endpoint("creating", &[("web", "172.18.0.9")]);
        creating.state = Lifecycle::Creating;
        creating.attachments[0].state = Lifecycle::Creating;
        let mut removing = endpoint("removing", &[("web", "172.18.0.3")]);
        removing.state = Lifecycle::Removing;
        store
            .write(|tx| {
                tx.put_endpoint(&endpoint(
                    "ready",
                    &[("web", "172.18.0.2"), ("bridge", "172.17.0.2")],
                ))?;
                tx.put_endpoint(&creating)?;
                tx.put_endpoint(&removing)
            })
            .expect("write");
        let used = store.used_addresses("web").expect("read");
        let expected: BTreeMap<Ipv4Addr, String> = [
            ("172.18.0.2", "ready"),
            ("172.18.0.3", "removing"),
            ("172.18.0.9", "creating"),
        ]
        .into_iter()
        .map(|(ip, name)| (ip.parse().expect("literal"), name.to_string()))
        .collect();
        assert_eq!(used, expected);
        assert_eq!(store.used_addresses("bridge").expect("read").len(), 1);
        assert!(store.used_addresses("none").expect("read").is_empty());
    }

    #[test]
    fn network_ids_are_monotonic_across_reopen() {
        let dir = Scratch::new("ids");
        let path = dir.store_path();
        {
            let store = Store::open(&path).expect("open");
            let ids: Vec<u32> = (0..3)
                .map(|_| store.write(|tx| tx.next_network_id()).expect("id"))
                .collect();
            assert_eq!(ids, [1, 2, 3]);
            let two = store
                .write(|tx| Ok((tx.next_network_id()?, tx.next_network_id()?)))
                .expect("ids");
            assert_eq!(two, (4, 5));
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.write(|tx| tx.next_network_id()).expect("id"), 6);
    }

    #[test]
    fn a_second_opener_waits_then_gets_the_store() {
        let dir = Scratch::new("wait");
        let path = dir.store_path();
        let first = Store::open(&path).expect("open");
        let err = Store::open_with_wait(&path, Duration::from_millis(250))
            .err()
            .expect("locked");
        assert_eq!(
            err.to_string(),
            format!(
                "state store {} is in use by another netpath process; wait for it to finish and retry",
                path.display()
            )
        );
        let releaser = thread::spawn(move || {
            thread::sleep(Duration::from_millis(400));
            drop(first);
        });
        let start = Instant::now();
        let second =
            Store::open_with_wait(&path, Duration::from_secs(10)).expect("opened after release");
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "did not wait: {:?}",
            start.elapsed()
        );
        releaser.join().expect("releaser");
        assert!(second.networks().expect("read").is_empty());
    }

    /// Runs this test binary again as a separate process executing [`child_process`].
    fn spawn_child(mode: &str, path: &Path) -> std::process::Child {
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "store::tests::child_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NETPATH_STORE_CHILD", mode)
            .env("NETPATH_STORE_CHILD_PATH", path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child")
    }

    /// Not a test of its own: the other process of the multi-process tests. Does nothing
    /// unless started by [`spawn_child`].
    #[test]
    #[ignore = "helper process for the multi-process store tests"]
    fn child_process() {
        let (Ok(mode), Some(path)) = (
            std::env::var("NETPATH_STORE_CHILD"),
            std::env::var_os("NETPATH_STORE_CHILD_PATH"),
        ) else {
            return;
        };
        let store = Store::open(Path::new(&path)).expect("child open");
        match mode.as_str() {
            "hold" => {
                println!("NETPATH-CHILD-LOCKED");
                thread::sleep(Duration::from_millis(1000));
            }
            "crash" => {
                store
                    .write(|tx| {
                        let id = tx.next_network_id()?;
                        tx.put_network(&Network {
                            id,
                            ..network("web", "172.18.0.0/16")
                        })?;
                        tx.put_endpoint(&endpoint("app", &[("web", "172.18.0.2")]))
                    })
                    .expect("child write");
                // Leave as a crash would: no destructor, no close, no flush beyond the commit.
                unsafe { libc::_exit(0) };
            }
            other => panic!("unknown child mode {other}"),
        }
    }

    #[test]
    fn another_process_holding_the_store_makes_open_wait_or_fail() {
        let dir = Scratch::new("process");
        let path = dir.store_path();
        let mut child = spawn_child("hold", &path);
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut lines = stdout.lines();
        assert!(
            lines
                .by_ref()
                .map_while(|l| l.ok())
                .any(|l| l.contains("NETPATH-CHILD-LOCKED")),
            "child never reported holding the store"
        );
        let err = Store::open_with_wait(&path, Duration::from_millis(200))
            .err()
            .expect("held by the child");
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        let store = Store::open_with_wait(&path, Duration::from_secs(10))
            .expect("open once the child exits");
        assert!(child.wait().expect("child").success());
        assert!(store.networks().expect("read").is_empty());
    }

    #[test]
    fn committed_writes_survive_a_crash() {
        let dir = Scratch::new("crash");
        let path = dir.store_path();
        let status = spawn_child("crash", &path).wait().expect("child");
        assert!(status.success(), "child failed: {status}");
        let store =
            Store::open_with_wait(&path, Duration::from_secs(2)).expect("reopen after crash");
        let web = store
            .network("web")
            .expect("read")
            .expect("committed network");
        assert_eq!(web.id, 1);
        assert_eq!(
            store
                .endpoint("app")
                .expect("read")
                .map(|e| e.attachments.len()),
            Some(1)
        );
        assert_eq!(store.write(|tx| tx.next_network_id()).expect("id"), 2);
    }

    #[test]
    fn unreadable_records_and_newer_schemas_are_reported() {
        let dir = Scratch::new("corrupt");
        let path = dir.store_path();
        drop(Store::open(&path).expect("create"));
        {
            let db = Database::create(&path).expect("raw open");
            let txn = db.begin_write().expect("txn");
            txn.open_table(NETWORKS)
                .expect("table")
                .insert("web", "{not json")
                .expect("insert");
            txn.commit().expect("commit");
        }
        let store = Store::open(&path).expect("open");
        let err = store.networks().expect_err("corrupt").to_string();
        assert!(
            err.starts_with("record \"web\" in table networks of state store"),
            "{err}"
        );
        assert!(store.network("web").is_err());
        drop(store);
        {
            let db = Database::create(&path).expect("raw open");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("table")
                .insert("schema_version", "7")
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = Store::open(&path).err().expect("too new").to_string();
        assert!(
            err.contains(
                "has schema version 7, newer than this netpath understands (1); use a newer netpath"
            ),
            "{err}"
        );
    }

    #[test]
    fn open_reports_an_uncreatable_directory() {
        let dir = Scratch::new("nodir");
        std::fs::create_dir_all(&dir.0).expect("dir");
        let blocker = dir.0.join("file");
        std::fs::write(&blocker, "").expect("file");
        let err = Store::open(&blocker.join("sub").join("state.redb"))
            .err()
            .expect("not a directory")
            .to_string();
        assert!(err.starts_with("cannot create state directory"), "{err}");
    }
}
