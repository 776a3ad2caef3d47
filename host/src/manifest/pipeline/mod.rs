//! The pipeline manifest (`manifests/*.toml`): sources, streams, stages, sinks
//! and the edges between them. Relative paths are relative to the manifest's folder.
//!
//! ```toml
//! [pipeline]
//! name = "quickstart"
//! data-dir = "../out/quickstart"      # default: ".weir/<name>"; dead letters etc. go here
//! include = ["abc-tolls/ingest.toml"] # fragments adding entries (any section below [api]);
//!                                     # paths inside a fragment are relative to its own folder
//!
//! [api]
//! listen = "127.0.0.1:7070"           # the default
//! max-body = "8MiB"                   # the default
//! access-keys = [{ id = "AKIAWEIR", secret-env = "WEIR_SECRET" }]   # SigV4 keys (or `secret = "..."`)
//!                                     # a key may be limited to grants of actions on resources:
//!                                     # allow = [{ actions = ["kinesis:PutRecord*"], resources = ["stream/toll-lines"] }]
//!                                     # (without `allow` it may do everything; see crate::access),
//!                                     # and held to `requests-per-second = 100`
//! tls = { cert = "certs/weir.pem", key = "certs/weir-key.pem" }   # HTTPS; reloaded when they change
//! max-connections = 1024              # the default: connections served at once
//! header-read-timeout = "30s"         # the default: a client slower with its headers is cut off
//!
//! [storage]                           # where streams are kept: on the local disk (the default), or
//! backend = "nats"                    # on a NATS JetStream cluster, shared by every host started with
//! servers = ["nats://127.0.0.1:4222"] # this manifest; a shard is a JetStream stream kept on `replicas`
//! replicas = 3                        # servers (the default); names start with `prefix` ("weir");
//! token-env = "NATS_TOKEN"            # credentials: token(-env), or user with password(-env);
//! timeout = "10s"                     # a call waits this long for the cluster (the default). The streams'
//!                                     # fsync, segment, capacity and write-limit settings are the disk's:
//!                                     # with NATS, set sync_interval on the servers
//!
//! [sources.toll-http]
//! kind = "http"                       # records are put through the HTTP API
//! stream = "toll-lines"
//!
//! [streams.toll-lines]                # kept on disk under <data-dir>/streams/toll-lines
//! shards = 1                          # each owns an equal slice of the MD5 hash key space (the default: 1);
//!                                     # once the stream exists, resharding through the API wins
//! capacity = 1000000                  # unconsumed records held before puts are refused (the default)
//! fsync = "group"                     # always | group (the default) | never: when a put is synced
//! fsync-interval = "5ms"              # longest a group commit waits for more puts (the default)
//! retention = "24h"                   # records older than this are dropped (the default; 1s to 365d)
//! max-size = "10GiB"                  # optional cap on the stream's files; the oldest go first
//! segment-size = "128MiB"             # retention drops whole segment files (the default)
//! write-limit = { bytes-per-second = "1MiB", records-per-second = 1000 }   # optional, as Kinesis shards
//!
//! [stages.etl]
//! plugin = "../plugins/toll-etl"      # a plugin folder (or its plugin.toml)
//! input = "toll-lines"                # a stream
//! output = "rows"                     # a sink or a stream
//! dead-letter = "rejected"            # a sink; default: <data-dir>/dead-letter/<stage>.jsonl
//! on-error = "dead-letter"            # dead-letter | skip | stop: for records the plugin keeps failing on
//! failed-batch = "bisect"             # bisect (the default): a batch the plugin fails on (trap, deadline,
//!                                     # memory cap) is tried again in halves, down to the records that fail
//!                                     # alone, which alone get on-error | whole: the batch gets it whole
//! batch-size = 256                    # records per call, 1 to 10000
//! batch-wait = "50ms"                 # how long a partial batch waits for more
//! limits = { timeout = "2s", memory = "64MiB" }
//! grants = { clock = false, dirs = [{ host = "../ref", guest = "/ref", access = "read-only" }] }
//! config = { currency = "USD" }       # checked against the plugin's [config.*]
//! window = { size = "10m" }           # aggregator stages: tumbling, or sliding with slide = "5m"; also
//!                                     # time = "event" | "arrival", out-of-orderness = "30s",
//!                                     # allowed-lateness = "0s", idle-timeout = "1m", max-ahead = "1h"
//! expected-keys = ["17", "42"]        # aggregator stages: keys with a result in every window, or
//! # expected-keys = { reference = "station-minimums", column = "station_id" }   # a reference table's values
//! group-by = "station_id"             # aggregator stages: group by this JSON field of the payload
//!                                     # instead of the record's partition key
//! late = "late-tolls"                 # aggregator stages: a stream for late records, with the reason
//!                                     # (the default: the dead letters)
//! hot-swap = { probation = "60s", max-failure-rate = 0.5, watch = false }   # after a swap (the defaults):
//!                                     # a version failing more than half its batches (3 at least) is rolled
//!                                     # back; `watch`: swap when the plugin's component file changes
//!
//! [sinks.rows]
//! kind = "file"
//! path = "../out/quickstart/rows.jsonl"
//! format = "lines"                    # lines: payload + newline; json: key, time and payload
//!
//! [delivery.toll-rows]                # a delivery stream (as Firehose), fed by direct puts...
//! stream = "toll-lines"               # ...or by a weir stream instead (optional)
//! transform = "../plugins/toll-etl"   # optional transformer plugin (with config, limits, failed-batch,
//!                                     # as a stage's); records it fails on go under error-prefix
//! buffer-size = "5MiB"                # deliver at this size (the default; 1KiB to 128MiB)...
//! buffer-interval = "300s"            # ...or at this age, whichever first (the default; 0s to 15m)
//! lake = "../out/lake"                # a local directory, or "s3://bucket/prefix" with:
//! s3 = { endpoint = "http://127.0.0.1:9000", region = "us-east-1", access-key-id = "...",
//!        secret-access-key-env = "LAKE_SECRET" }   # all optional; else the AWS environment
//! prefix = "rows/"                    # object keys: <prefix>YYYY/MM/DD/HH/<name>-<shard>-<first>-<last>;
//!                                     # or expand !{timestamp:yyyy/MM/dd} / !{firehose:error-output-type}
//! error-prefix = "errors/"            # failed records with their reasons (the default)
//! backup-prefix = "raw/"              # optional: keep the untransformed records too
//! compression = "gzip"                # none (the default) | gzip
//! retry-duration = "24h"              # lake writes retried this long, then the records go under error-prefix
//! deduplicate = { id-pattern = "^([^,]+)," }  # direct puts only: a record whose id the buffer holds is
//!                                     # answered as stored and not buffered again (as a stream's, below)
//!
//! [delivery.toll-rows.warehouse]      # optional: rows are also bulk-loaded into a table
//! kind = "sqlite"                     # sqlite (the default, created if missing) | postgres (the table must exist)
//! database = "../out/warehouse.db"    # sqlite: a file; postgres: "host=127.0.0.1 user=weir dbname=tolls"
//! database-env = "WEIR_WAREHOUSE"     # ...or the environment variable holding it (keeps passwords out)
//! table = "toll_transactions"
//! columns = ["transaction_id", "amount_cents"]        # columns named like the rows' JSON fields, or
//! # columns = { amount = "amount_cents" }             # column = "field"
//! key = "transaction_id"              # optional: a row whose key is in the table already is skipped and
//!                                     # counted as a duplicate (needs a primary key or unique index on it)
//! retry-duration = "1h"               # loads retried this long, then the staged object is listed under error-prefix
//!
//! [tables.month-totals]               # a state table (get / put / delete / put-if / add), kept in
//! description = "..."                 # <data-dir>/state.redb; also GET / PUT /v1/tables/{table}/items/{key}
//!
//! [channels.app]                      # a notification channel for notifier plugins:
//! kind = "inbox"                      # inbox (GET /v1/inbox/{recipient}?channel=app) | webhook | log
//! # kind = "webhook"                  # POSTs JSON signed with HMAC-SHA256 (x-weir-signature), with
//! # url = "https://ops.example/hook"  # a stable x-weir-delivery id; retried for retry-duration (1h),
//! # secret-env = "OPS_HOOK_SECRET"    # then listed at GET /v1/channels/{name}/failed
//!
//! [reference.station-minimums]        # a reference table, looked up by plugins (`reference` import)
//! lake = "abc-tolls"                  # a directory or "s3://bucket/prefix" (with `s3 = { ... }`)
//! object = "station_minimums.csv"     # CSV with a header row, or JSON lines (.jsonl / .ndjson)
//! key = ["station_id", "weekday", "slot"]   # the key columns; a lookup key joins their values with `|`
//! format = "csv"                      # optional: from the object's extension
//! refresh = "30s"                     # how often the object is checked for a change (the default)
//! ```

mod delivery;
mod graph;
mod load;
mod raw;
mod resources;
mod spec;
mod stage;
mod storage;

pub use load::load;
pub use spec::*;
pub use storage::{Backend, Storage};
