//! Deployments the realtime tests run over, so that a test of routing, resume or leakage is
//! written once: one instance on each backend, or three instances (a [`Cluster`]).
//!
//! A test takes a [`Deployment`] and addresses its instances by index: [`Deployment::node`] is
//! `i` modulo the instance count, so on one instance every index is the same server. Tests
//! write through node 0 and observe through nodes 1 and 2: across instances on three, the
//! single-instance case on one.
//!
//! The realtime transport is a second axis ([`Transport`]): WebSocket and SSE. A test written
//! against [`RtClient`] (opened with [`Deployment::open`] and its siblings) runs over both with
//! [`every_transport!`](crate::every_transport): one test per transport and topology.
//! [`every_topology!`](crate::every_topology) runs a test over WebSocket only, for what only a
//! socket does; [`Deployment::ws`] is a socket whatever the transport.

use std::fmt;

use super::*;

/// Where the server under test runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One instance in the test process on SQLite.
    Sqlite,
    /// One instance in the test process on PostgreSQL.
    Postgres,
    /// Three server processes on one PostgreSQL database and a Redis of the test's own.
    ThreeInstances,
}

/// How clients receive realtime frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `/realtime`.
    WebSocket,
    /// `GET /realtime/sse` (and `POST /realtime/sse/{streamId}`).
    Sse,
}

enum Servers {
    One(TestServer),
    Several(Cluster),
}

/// The servers of one test on a [`Topology`], reached over a [`Transport`].
pub struct Deployment {
    pub topology: Topology,
    pub transport: Transport,
    servers: Servers,
}

/// Instance names in labels and messages; on one instance they all name the same server.
const NAMES: [&str; 3] = ["A", "B", "C"];

impl Deployment {
    /// Starts the servers, with settings overridden (`TASKFORGE_*` names) on every instance.
    /// `None` (skipped, with a message) when the topology needs PostgreSQL or `redis-server` and
    /// they are missing outside CI (under `CI=true` that fails instead).
    pub async fn start(
        topology: Topology,
        transport: Transport,
        overrides: &[(&str, &str)],
    ) -> Option<Deployment> {
        let servers = match topology {
            Topology::Sqlite => {
                Servers::One(TestServer::start_with(Backend::Sqlite, overrides).await)
            }
            Topology::Postgres => {
                if !postgres_enabled() {
                    return None;
                }
                Servers::One(TestServer::start_with(Backend::Postgres, overrides).await)
            }
            Topology::ThreeInstances => Servers::Several(Cluster::start(3, overrides).await?),
        };
        Some(Deployment {
            topology,
            transport,
            servers,
        })
    }

    /// How many instances there are (1 or 3).
    pub fn len(&self) -> usize {
        match &self.servers {
            Servers::One(_) => 1,
            Servers::Several(c) => c.nodes.len(),
        }
    }

    /// Instance `i` modulo the instance count.
    pub fn node(&self, i: usize) -> &TestServer {
        match &self.servers {
            Servers::One(srv) => srv,
            Servers::Several(c) => c.node(i),
        }
    }

    /// The name of instance `i` (A, B, C) for labels and messages.
    pub fn name(&self, i: usize) -> &'static str {
        NAMES[i % NAMES.len()]
    }

    pub fn backend(&self) -> Backend {
        self.node(0).backend
    }

    /// The HTTP client of instance `i`.
    pub fn client(&self, i: usize) -> Api {
        self.node(i).client()
    }

    /// A WebSocket client of instance `i` authenticated with `token` (whatever the deployment's
    /// transport: [`Deployment::open`] opens one of that transport).
    pub async fn ws(&self, i: usize, token: &str) -> WsClient {
        self.node(i).ws(token).await
    }

    /// [`Deployment::ws`] with the label `label@<instance name>`.
    pub async fn ws_labeled(&self, i: usize, token: &str, label: &str) -> WsClient {
        self.ws(i, token)
            .await
            .labeled(&format!("{label}@{}", self.name(i)))
    }
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.topology {
            Topology::Sqlite | Topology::Postgres => {
                write!(f, "one instance on {:?}", self.backend())?
            }
            Topology::ThreeInstances => write!(f, "three instances on {:?}", self.backend())?,
        }
        write!(f, " over {:?}", self.transport)
    }
}

/// Starts the deployment and runs `test` on it; returns at once when it is skipped.
pub async fn on_deployment<F, Fut>(
    topology: Topology,
    transport: Transport,
    overrides: &[(&str, &str)],
    test: F,
) where
    F: FnOnce(Deployment) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if let Some(d) = Deployment::start(topology, transport, overrides).await {
        test(d).await;
    }
}

/// Generates `mod <name> { sqlite, postgres, three_instances }` tests for each
/// `async fn <name>(Deployment)`; `every_topology!(with [("TASKFORGE_X", "v")] => names...)`
/// starts every deployment with those settings.
#[macro_export]
macro_rules! every_topology {
    (slow: $($name:ident),* $(,)?) => {
        $(
            $crate::every_topology!(
                @one [#[ignore = "slow set: cargo test -- --ignored"]] &[], $name
            );
        )*
    };
    (with $overrides:expr => $($name:ident),* $(,)?) => {
        $(
            $crate::every_topology!(@one [] $overrides, $name);
        )*
    };
    (@one [$(#[$attr:meta])*] $overrides:expr, $name:ident) => {
        mod $name {
            use $crate::common::{Topology, Transport, on_deployment};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn sqlite() {
                on_deployment(Topology::Sqlite, Transport::WebSocket, $overrides, super::$name)
                    .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn postgres() {
                on_deployment(Topology::Postgres, Transport::WebSocket, $overrides, super::$name)
                    .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn three_instances() {
                on_deployment(
                    Topology::ThreeInstances,
                    Transport::WebSocket,
                    $overrides,
                    super::$name,
                )
                .await
            }
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::every_topology!(with &[] => $($name),*);
    };
}

/// Generates `mod <name> { mod websocket { sqlite, postgres, three_instances } mod sse { … } }`
/// for each `async fn <name>(Deployment)`: the test over each transport on every topology.
/// `every_transport!(slow: …)` puts them in the slow set; `every_transport!(with [(…)] => …)`
/// starts every deployment with those settings; `every_transport!(backends: …)` runs on one
/// instance of each backend only (for tests that do not need three instances).
#[macro_export]
macro_rules! every_transport {
    (slow: $($name:ident),* $(,)?) => {
        $(
            $crate::every_transport!(
                @one [#[ignore = "slow set: cargo test -- --ignored"]] &[], $name,
                [sqlite: Sqlite, postgres: Postgres, three_instances: ThreeInstances]
            );
        )*
    };
    (backends: $($name:ident),* $(,)?) => {
        $(
            $crate::every_transport!(@one [] &[], $name, [sqlite: Sqlite, postgres: Postgres]);
        )*
    };
    (with $overrides:expr => $($name:ident),* $(,)?) => {
        $(
            $crate::every_transport!(
                @one [] $overrides, $name,
                [sqlite: Sqlite, postgres: Postgres, three_instances: ThreeInstances]
            );
        )*
    };
    (@one [$(#[$attr:meta])*] $overrides:expr, $name:ident, $topologies:tt) => {
        mod $name {
            $crate::every_transport!(
                @tests [$(#[$attr])*] $overrides, $name, websocket, WebSocket, $topologies
            );
            $crate::every_transport!(@tests [$(#[$attr])*] $overrides, $name, sse, Sse, $topologies);
        }
    };
    (@tests $attrs:tt $overrides:expr, $name:ident, $module:ident, $transport:ident,
        [$($test:ident: $topology:ident),*]) => {
        mod $module {
            $(
                $crate::every_transport!(
                    @test $attrs $overrides, $name, $transport, $test, $topology
                );
            )*
        }
    };
    (@test [$(#[$attr:meta])*] $overrides:expr, $name:ident, $transport:ident, $test:ident,
        $topology:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $test() {
            $crate::common::on_deployment(
                $crate::common::Topology::$topology,
                $crate::common::Transport::$transport,
                $overrides,
                super::super::$name,
            )
            .await
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::every_transport!(with &[] => $($name),*);
    };
}
