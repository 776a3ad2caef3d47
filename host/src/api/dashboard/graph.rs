//! The pipeline as the dashboard draws it: nodes (sources, streams, stages,
//! delivery streams, sinks, the lake, warehouse tables, channels) and the
//! edges records flow along, each with the counter of what crossed it, all
//! from the manifest.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::manifest::{DeadLetter, Pipeline, Target};
use crate::pipeline::PipelineStatus;

/// What a node stands for (its CSS class and the figures shown in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// Where records come from: a `[sources]` entry, or callers of the API.
    Source,
    /// A stream.
    Stream,
    /// A stage and its plugin.
    Stage,
    /// A delivery stream.
    Delivery,
    /// A file sink, or a stage's dead-letter file.
    Sink,
    /// A lake (directory or bucket).
    Lake,
    /// A warehouse table.
    Warehouse,
    /// A notification channel.
    Channel,
}

impl NodeKind {
    /// What its nodes' ids start with (as it is written in JSON).
    fn prefix(self) -> &'static str {
        match self {
            NodeKind::Source => "source",
            NodeKind::Stream => "stream",
            NodeKind::Stage => "stage",
            NodeKind::Delivery => "delivery",
            NodeKind::Sink => "sink",
            NodeKind::Lake => "lake",
            NodeKind::Warehouse => "warehouse",
            NodeKind::Channel => "channel",
        }
    }
}

/// A box in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Unique: `<kind>:<name>`.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its name in the manifest (a stage's, a stream's, ...).
    pub name: String,
    /// More about it (a lake's location, a channel's kind).
    pub detail: String,
}

/// What an edge carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeKind {
    /// Records on their way.
    Records,
    /// Records set aside by a stage.
    DeadLetters,
    /// Records later than a window's allowed lateness.
    Late,
    /// Notifications.
    Notifications,
}

/// An arrow between two nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// `e<n>`, the key of its count in [`Graph::counts`].
    pub id: String,
    /// The node records leave.
    pub from: String,
    /// The node they reach.
    pub to: String,
    /// What it carries.
    pub kind: EdgeKind,
    #[serde(skip)]
    counter: Counter,
}

/// The status figure that counts what crossed an edge since the start.
#[derive(Debug, Clone)]
enum Counter {
    StreamRecords(String),
    StageIn(String),
    StageOut(String),
    StageDeadLettered(String),
    StageLate(String),
    DeliveryIn(String),
    DeliveryToLake(String),
    DeliveryRows(String),
    ChannelSent(String),
}

/// The pipeline's graph.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// The pipeline's name.
    pub pipeline: String,
    /// Its description.
    pub description: String,
    /// Every box.
    pub nodes: Vec<Node>,
    /// Every arrow.
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The graph of `pipeline`'s manifest.
    pub fn of(pipeline: &Pipeline) -> Graph {
        let mut graph = Graph {
            pipeline: pipeline.name.to_string(),
            description: pipeline.description.clone(),
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        let stream = |name: &dyn std::fmt::Display| format!("stream:{name}");
        let is_stream = |name: &str| pipeline.streams.iter().any(|s| s.name.as_str() == name);
        for source in &pipeline.sources {
            graph.node(NodeKind::Source, source.name.as_str(), "source");
            let to = stream(&source.stream);
            graph.edge(
                format!("source:{}", source.name),
                to,
                EdgeKind::Records,
                Counter::StreamRecords(source.stream.to_string()),
            );
        }
        for s in &pipeline.streams {
            let shards = s.storage.shards;
            graph.node(
                NodeKind::Stream,
                s.name.as_str(),
                &format!("{shards} shard{}", if shards == 1 { "" } else { "s" }),
            );
        }
        for sink in &pipeline.sinks {
            graph.node(NodeKind::Sink, sink.name.as_str(), &sink.path.display().to_string());
        }
        for c in &pipeline.channels {
            let kind = match c.kind {
                crate::notify::ChannelKind::Inbox => "inbox",
                crate::notify::ChannelKind::Webhook(_) => "webhook",
                crate::notify::ChannelKind::Log => "log",
            };
            graph.node(NodeKind::Channel, &c.name, kind);
        }
        for stage in &pipeline.stages {
            let name = stage.name.to_string();
            let id = format!("stage:{name}");
            graph.node(NodeKind::Stage, &name, stage.plugin.info.name.as_str());
            graph.edge(stream(&stage.input), id.clone(), EdgeKind::Records, Counter::StageIn(name.clone()));
            let out = match &stage.output {
                Target::Stream(s) => Some(stream(s)),
                Target::Sink(s) => Some(format!("sink:{s}")),
                Target::Effects => None,
            };
            if let Some(out) = out {
                graph.edge(id.clone(), out, EdgeKind::Records, Counter::StageOut(name.clone()));
            }
            let dead = match &stage.dead_letter {
                DeadLetter::Stream(s) => stream(s),
                DeadLetter::Sink(s) => format!("sink:{s}"),
                DeadLetter::File(path) => {
                    // The stage's own file: one node per stage, all called `dead letters`.
                    let id = format!("dead-letters:{name}");
                    let detail = path.display().to_string();
                    graph.nodes.push(Node {
                        id: id.clone(),
                        kind: NodeKind::Sink,
                        name: "dead letters".into(),
                        detail,
                    });
                    id
                }
            };
            graph.edge(id.clone(), dead, EdgeKind::DeadLetters, Counter::StageDeadLettered(name.clone()));
            if let Some(late) = &stage.late {
                let to = if is_stream(late.as_str()) { stream(late) } else { format!("sink:{late}") };
                graph.edge(id.clone(), to, EdgeKind::Late, Counter::StageLate(name.clone()));
            }
            for channel in &stage.grants.uses.channels {
                let to = format!("channel:{channel}");
                graph.edge(id.clone(), to, EdgeKind::Notifications, Counter::ChannelSent(channel.clone()));
            }
        }
        for d in &pipeline.deliveries {
            let name = d.name.to_string();
            let id = format!("delivery:{name}");
            let detail = d.transform.as_ref().map_or_else(String::new, |t| t.plugin.info.name.to_string());
            graph.node(NodeKind::Delivery, &name, &detail);
            let from = match &d.source_stream {
                Some(s) => stream(s),
                None => graph.api_producers(),
            };
            graph.edge(from, id.clone(), EdgeKind::Records, Counter::DeliveryIn(name.clone()));
            let lake = d.lake.describe();
            let short = lake.rsplit('/').find(|part| !part.is_empty()).unwrap_or(&lake).to_owned();
            let lake_id = format!("lake:{lake}");
            if !graph.nodes.iter().any(|n| n.id == lake_id) {
                graph.nodes.push(Node { id: lake_id.clone(), kind: NodeKind::Lake, name: short, detail: lake });
            }
            graph.edge(id.clone(), lake_id, EdgeKind::Records, Counter::DeliveryToLake(name.clone()));
            if let Some(w) = &d.warehouse {
                graph.node(NodeKind::Warehouse, &w.table, "warehouse table");
                graph.edge(id, format!("warehouse:{}", w.table), EdgeKind::Records, Counter::DeliveryRows(name));
            }
        }
        // Streams nothing in the manifest writes to are fed by callers of the API.
        let fed: Vec<String> = graph.edges.iter().map(|e| e.to.clone()).collect();
        for s in &pipeline.streams {
            let id = stream(&s.name);
            if !fed.contains(&id) {
                let from = graph.api_producers();
                graph.edge(from, id, EdgeKind::Records, Counter::StreamRecords(s.name.to_string()));
            }
        }
        graph
    }

    /// What crossed each edge since the start, by edge id.
    pub fn counts(&self, status: &PipelineStatus) -> BTreeMap<String, u64> {
        let stage = |name: &str| status.stages.iter().find(|s| s.name == name);
        let delivery = |name: &str| status.deliveries.iter().find(|d| d.name == name);
        self.edges
            .iter()
            .map(|edge| {
                let count = match &edge.counter {
                    Counter::StreamRecords(s) => status.streams.get(s).copied(),
                    Counter::StageIn(s) => stage(s).map(|s| s.records_in),
                    Counter::StageOut(s) => stage(s).map(|s| s.records_out),
                    Counter::StageDeadLettered(s) => stage(s).map(|s| s.dead_lettered),
                    Counter::StageLate(s) => stage(s).map(|s| s.late),
                    Counter::DeliveryIn(d) => delivery(d).map(|d| d.records_in),
                    Counter::DeliveryToLake(d) => delivery(d).map(|d| d.records_delivered + d.records_failed),
                    Counter::DeliveryRows(d) => delivery(d).map(|d| d.rows_loaded),
                    Counter::ChannelSent(c) => status.channels.iter().find(|ch| &ch.name == c).map(|c| c.sent),
                };
                (edge.id.clone(), count.unwrap_or(0))
            })
            .collect()
    }

    fn node(&mut self, kind: NodeKind, name: &str, detail: &str) {
        let id = format!("{}:{name}", kind.prefix());
        if !self.nodes.iter().any(|n| n.id == id) {
            self.nodes.push(Node { id, kind, name: name.to_owned(), detail: detail.to_owned() });
        }
    }

    fn edge(&mut self, from: String, to: String, kind: EdgeKind, counter: Counter) {
        let id = format!("e{}", self.edges.len());
        self.edges.push(Edge { id, from, to, kind, counter });
    }

    /// The node of the API's callers (added on first use).
    fn api_producers(&mut self) -> String {
        self.node(NodeKind::Source, "API", "PutRecords, PutRecordBatch");
        "source:API".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_showcase_graph_joins_its_streams_stages_deliveries_and_channels() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/abc-tolls.toml");
        let pipeline = crate::manifest::load(&path).expect("the showcase manifest loads");
        let graph = Graph::of(&pipeline);
        let has = |from: &str, to: &str, kind: EdgeKind| {
            graph.edges.iter().any(|e| e.from == from && e.to == to && e.kind == kind)
        };
        assert!(has("source:toll-http", "stream:toll-lines", EdgeKind::Records));
        assert!(has("stream:toll-lines", "stage:etl", EdgeKind::Records));
        assert!(has("stage:etl", "stream:toll-rows", EdgeKind::Records));
        assert!(has("stage:etl", "stream:toll-rejects", EdgeKind::DeadLetters));
        assert!(has("stream:toll-rows", "delivery:toll-transactions", EdgeKind::Records));
        assert!(has("delivery:toll-transactions", "warehouse:toll_transactions", EdgeKind::Records));
        assert!(has("stage:traffic-alert", "channel:operations-hook", EdgeKind::Notifications));
        assert!(has("stage:billing-alert", "channel:app", EdgeKind::Notifications));
        for edge in &graph.edges {
            for end in [&edge.from, &edge.to] {
                assert!(graph.nodes.iter().any(|n| &n.id == end), "edge {} ends at a node: {end}", edge.id);
            }
        }
        let stages = graph.nodes.iter().filter(|n| n.kind == NodeKind::Stage).count();
        assert_eq!(stages, 5);
        let kinds = [NodeKind::Source, NodeKind::Stream, NodeKind::Stage, NodeKind::Delivery, NodeKind::Sink];
        for kind in kinds.into_iter().chain([NodeKind::Lake, NodeKind::Warehouse, NodeKind::Channel]) {
            assert_eq!(serde_json::to_value(kind).expect("a kind"), kind.prefix(), "ids start with the kind's name");
        }
    }
}
