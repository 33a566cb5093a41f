//! `spec.alerts` of a CaptureProfile: what the controller tells users about
//! the profile's conversations (new peers, rate spikes, TCP resets, overlay
//! loss), and the condition types and reasons it writes on PodFlows.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::capture_profile::{Bounds, SpecProblem};
use super::parse_duration;

/// Bounds of `alerts.eventInterval`.
pub const EVENT_INTERVAL_BOUNDS: Bounds = Bounds {
    field: "alerts.eventInterval",
    min: "10s",
    max: "24h",
};
/// Bounds of `alerts.newPeer.learningWindow`.
pub const LEARNING_WINDOW_BOUNDS: Bounds = Bounds {
    field: "alerts.newPeer.learningWindow",
    min: "0s",
    max: "168h",
};
/// Bounds of `alerts.newPeer.ipv4PrefixLength`.
pub const IPV4_PREFIX_BOUNDS: Bounds = Bounds {
    field: "alerts.newPeer.ipv4PrefixLength",
    min: "0",
    max: "32",
};
/// Bounds of `alerts.newPeer.ipv6PrefixLength`.
pub const IPV6_PREFIX_BOUNDS: Bounds = Bounds {
    field: "alerts.newPeer.ipv6PrefixLength",
    min: "0",
    max: "128",
};
/// Bounds of `alerts.rateSpike.window`.
pub const RATE_WINDOW_BOUNDS: Bounds = Bounds {
    field: "alerts.rateSpike.window",
    min: "1s",
    max: "24h",
};
/// Bounds of `alerts.rateSpike.baselineWindow`.
pub const BASELINE_WINDOW_BOUNDS: Bounds = Bounds {
    field: "alerts.rateSpike.baselineWindow",
    min: "1s",
    max: "24h",
};
/// Bounds of `alerts.rateSpike.baselineMultiplier`.
pub const BASELINE_MULTIPLIER_BOUNDS: Bounds = Bounds {
    field: "alerts.rateSpike.baselineMultiplier",
    min: "2",
    max: "1000",
};
/// Bounds of `alerts.tcpResets.percent`.
pub const RESET_PERCENT_BOUNDS: Bounds = Bounds {
    field: "alerts.tcpResets.percent",
    min: "1",
    max: "100",
};

/// Alerts on the profile's conversations. Each alert the controller raises
/// is a Warning Event on the pod (and one on the profile), a condition on
/// the PodFlow, and a count in `weir_alerts_total`. Events are rate-limited
/// per conversation (`eventInterval`) and per namespace (a controller
/// setting).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// A conversation with a peer (a workload, or addresses grouped by
    /// prefix) that this profile's pods did not talk to during the learning
    /// window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_peer: Option<NewPeerAlert>,
    /// A conversation's rate above a threshold or a multiple of its own
    /// moving baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_spike: Option<RateSpikeAlert>,
    /// TCP connections of a conversation that carried a reset (RST).
    #[serde(rename = "tcpResets", default, skip_serializing_if = "Option::is_none")]
    pub tcp_resets: Option<TcpResetsAlert>,
    /// Packets one node sent into the VXLAN overlay that the other node
    /// never took out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_loss: Option<OverlayLossAlert>,
    /// The least time between two Events of one alert about one
    /// conversation while it stays raised (a duration, 10s to 24h).
    #[serde(default = "default_event_interval")]
    #[schemars(
        length(max = 32),
        regex(pattern = super::DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": EVENT_INTERVAL_BOUNDS.duration_rule(),
            "message": EVENT_INTERVAL_BOUNDS.message()
        }])
    )]
    pub event_interval: String,
}

/// See [`AlertsSpec::new_peer`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewPeerAlert {
    /// How long after the profile's creation peers are learned rather than
    /// alerted on (a duration, 0s to 168h).
    #[serde(default = "default_learning_window")]
    #[schemars(
        length(max = 32),
        regex(pattern = super::DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": LEARNING_WINDOW_BOUNDS.duration_rule(),
            "message": LEARNING_WINDOW_BOUNDS.message()
        }])
    )]
    pub learning_window: String,
    /// Peers that are not pods are known by their address's prefix of this
    /// length (IPv4; 0 to 32).
    #[serde(default = "default_ipv4_prefix")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": IPV4_PREFIX_BOUNDS.int_rule(),
        "message": IPV4_PREFIX_BOUNDS.message()
    }]))]
    pub ipv4_prefix_length: i32,
    /// The same for IPv6 (0 to 128).
    #[serde(default = "default_ipv6_prefix")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": IPV6_PREFIX_BOUNDS.int_rule(),
        "message": IPV6_PREFIX_BOUNDS.message()
    }]))]
    pub ipv6_prefix_length: i32,
}

/// See [`AlertsSpec::rate_spike`]. At least one of `bytesPerSecond`,
/// `packetsPerSecond` and `baselineMultiplier` is set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.bytesPerSecond) || has(self.packetsPerSecond) || has(self.baselineMultiplier)",
    "message": "rateSpike needs bytesPerSecond, packetsPerSecond or baselineMultiplier"
}]))]
pub struct RateSpikeAlert {
    /// Raised when a conversation (both directions) carries more bytes per
    /// second than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bytes_per_second: Option<i64>,
    /// Raised above this many packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub packets_per_second: Option<i64>,
    /// Raised when the byte rate is this many times the conversation's
    /// moving baseline (2 to 1000), once the baseline has learned for
    /// `baselineWindow`, and the rate is at least `baselineFloorBytesPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": BASELINE_MULTIPLIER_BOUNDS.int_rule(),
        "message": BASELINE_MULTIPLIER_BOUNDS.message()
    }]))]
    pub baseline_multiplier: Option<i32>,
    /// The time constant of the moving baseline (a duration, 1s to 24h).
    #[serde(default = "default_baseline_window")]
    #[schemars(
        length(max = 32),
        regex(pattern = super::DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": BASELINE_WINDOW_BOUNDS.duration_rule(),
            "message": BASELINE_WINDOW_BOUNDS.message()
        }])
    )]
    pub baseline_window: String,
    /// Rates below this (bytes per second) never count as a spike over the
    /// baseline.
    #[serde(default = "default_baseline_floor")]
    #[schemars(range(min = 0))]
    pub baseline_floor_bytes_per_second: i64,
    /// The rate is measured over this window (a duration, 1s to 24h; the
    /// controller uses at least two flush intervals).
    #[serde(default = "default_rate_window")]
    #[schemars(
        length(max = 32),
        regex(pattern = super::DURATION_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": RATE_WINDOW_BOUNDS.duration_rule(),
            "message": RATE_WINDOW_BOUNDS.message()
        }])
    )]
    pub window: String,
}

/// See [`AlertsSpec::tcp_resets`]. At least one of `count` and `percent`
/// is set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.count) || has(self.percent)",
    "message": "tcpResets needs count or percent"
}]))]
pub struct TcpResetsAlert {
    /// Raised when at least this many of the conversation's connections
    /// carried a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<i64>,
    /// Raised when at least this percentage of the conversation's
    /// connections carried a reset (1 to 100), once it has `minConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": RESET_PERCENT_BOUNDS.int_rule(),
        "message": RESET_PERCENT_BOUNDS.message()
    }]))]
    pub percent: Option<i32>,
    /// The fewest connections for `percent` to apply.
    #[serde(default = "default_min_connections")]
    #[schemars(range(min = 1))]
    pub min_connections: i64,
}

/// See [`AlertsSpec::overlay_loss`]. Judged once a conversation has been
/// quiet for two flush intervals, when both nodes' counts are final:
/// packets in flight are not loss.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OverlayLossAlert {
    /// Raised when at least this many packets were lost (both directions).
    #[serde(default = "default_loss_packets")]
    #[schemars(range(min = 1))]
    pub packets: i64,
}

fn default_event_interval() -> String {
    "5m".into()
}
fn default_learning_window() -> String {
    "10m".into()
}
fn default_ipv4_prefix() -> i32 {
    24
}
fn default_ipv6_prefix() -> i32 {
    64
}
fn default_baseline_window() -> String {
    "10m".into()
}
fn default_baseline_floor() -> i64 {
    1024
}
fn default_rate_window() -> String {
    "30s".into()
}
fn default_min_connections() -> i64 {
    10
}
fn default_loss_packets() -> i64 {
    1
}

impl Default for AlertsSpec {
    fn default() -> Self {
        Self {
            new_peer: None,
            rate_spike: None,
            tcp_resets: None,
            overlay_loss: None,
            event_interval: default_event_interval(),
        }
    }
}

impl Default for NewPeerAlert {
    fn default() -> Self {
        Self {
            learning_window: default_learning_window(),
            ipv4_prefix_length: default_ipv4_prefix(),
            ipv6_prefix_length: default_ipv6_prefix(),
        }
    }
}

impl Default for OverlayLossAlert {
    fn default() -> Self {
        Self {
            packets: default_loss_packets(),
        }
    }
}

impl RateSpikeAlert {
    /// A spike alert with its defaults and no threshold set.
    pub fn with_defaults() -> Self {
        Self {
            bytes_per_second: None,
            packets_per_second: None,
            baseline_multiplier: None,
            baseline_window: default_baseline_window(),
            baseline_floor_bytes_per_second: default_baseline_floor(),
            window: default_rate_window(),
        }
    }
}

impl TcpResetsAlert {
    /// A reset alert with its defaults and no threshold set.
    pub fn with_defaults() -> Self {
        Self {
            count: None,
            percent: None,
            min_connections: default_min_connections(),
        }
    }
}

fn duration_in(bounds: &Bounds, text: &str) -> Result<Duration, SpecProblem> {
    match parse_duration(text) {
        Some(d) if bounds.admits_duration(d) => Ok(d),
        Some(_) => Err(invalid(bounds.message())),
        None => Err(invalid(format!(
            "{}: {text:?} is not a duration such as 30s or 10m",
            bounds.field
        ))),
    }
}

fn invalid(message: impl Into<String>) -> SpecProblem {
    SpecProblem {
        reason: super::capture_profile::reasons::INVALID_ALERTS,
        message: message.into(),
    }
}

impl AlertsSpec {
    /// `eventInterval` as a duration (after [`check`](Self::check) passed).
    pub fn event_interval(&self) -> Option<Duration> {
        parse_duration(&self.event_interval)
    }

    /// Checks what the schema checks, for objects that skipped it.
    pub fn check(&self) -> Result<(), SpecProblem> {
        duration_in(&EVENT_INTERVAL_BOUNDS, &self.event_interval)?;
        if let Some(p) = &self.new_peer {
            duration_in(&LEARNING_WINDOW_BOUNDS, &p.learning_window)?;
            if !IPV4_PREFIX_BOUNDS.admits_int(i64::from(p.ipv4_prefix_length)) {
                return Err(invalid(IPV4_PREFIX_BOUNDS.message()));
            }
            if !IPV6_PREFIX_BOUNDS.admits_int(i64::from(p.ipv6_prefix_length)) {
                return Err(invalid(IPV6_PREFIX_BOUNDS.message()));
            }
        }
        if let Some(s) = &self.rate_spike {
            if s.bytes_per_second.is_none()
                && s.packets_per_second.is_none()
                && s.baseline_multiplier.is_none()
            {
                return Err(invalid(
                    "rateSpike needs bytesPerSecond, packetsPerSecond or baselineMultiplier",
                ));
            }
            if s.bytes_per_second.is_some_and(|v| v < 1)
                || s.packets_per_second.is_some_and(|v| v < 1)
            {
                return Err(invalid(
                    "rateSpike thresholds must be at least 1 per second",
                ));
            }
            if let Some(m) = s.baseline_multiplier
                && !BASELINE_MULTIPLIER_BOUNDS.admits_int(i64::from(m))
            {
                return Err(invalid(BASELINE_MULTIPLIER_BOUNDS.message()));
            }
            duration_in(&RATE_WINDOW_BOUNDS, &s.window)?;
            duration_in(&BASELINE_WINDOW_BOUNDS, &s.baseline_window)?;
            if s.baseline_floor_bytes_per_second < 0 {
                return Err(invalid(
                    "rateSpike.baselineFloorBytesPerSecond must not be negative",
                ));
            }
        }
        if let Some(r) = &self.tcp_resets {
            if r.count.is_none() && r.percent.is_none() {
                return Err(invalid("tcpResets needs count or percent"));
            }
            if r.count.is_some_and(|c| c < 1) || r.min_connections < 1 {
                return Err(invalid(
                    "tcpResets count and minConnections must be at least 1",
                ));
            }
            if let Some(p) = r.percent
                && !RESET_PERCENT_BOUNDS.admits_int(i64::from(p))
            {
                return Err(invalid(RESET_PERCENT_BOUNDS.message()));
            }
        }
        if let Some(l) = &self.overlay_loss
            && l.packets < 1
        {
            return Err(invalid("overlayLoss.packets must be at least 1"));
        }
        Ok(())
    }
}

/// PodFlow condition types, one per alert; the controller writes the
/// condition of each alert its profile asks for.
pub mod conditions {
    /// The conversation's peer was not known to the profile when it began.
    pub const NEW_PEER: &str = "NewPeer";
    /// The conversation's rate is above the profile's threshold or baseline.
    pub const RATE_SPIKE: &str = "RateSpike";
    /// Connections of the conversation carried TCP resets.
    pub const TCP_RESETS: &str = "TCPResets";
    /// The overlay lost packets of the conversation between the nodes.
    pub const OVERLAY_LOSS: &str = "OverlayLoss";
    /// Every alert condition type.
    pub const ALL: [&str; 4] = [NEW_PEER, RATE_SPIKE, TCP_RESETS, OVERLAY_LOSS];
}

/// Reasons of the alert conditions (and of their Events).
pub mod reasons {
    /// NewPeer=True: first seen after the learning window.
    pub const UNKNOWN_PEER: &str = "UnknownPeer";
    /// NewPeer=False: seen during the learning window.
    pub const LEARNED: &str = "Learned";
    /// NewPeer=False: a peer already known.
    pub const KNOWN_PEER: &str = "KnownPeer";
    /// RateSpike=True: above `bytesPerSecond` or `packetsPerSecond`.
    pub const ABOVE_THRESHOLD: &str = "AboveThreshold";
    /// RateSpike=True: above `baselineMultiplier` × the baseline.
    pub const ABOVE_BASELINE: &str = "AboveBaseline";
    /// RateSpike=False.
    pub const WITHIN_LIMITS: &str = "WithinLimits";
    /// TCPResets=True.
    pub const RESETS_SEEN: &str = "ResetsSeen";
    /// TCPResets=False.
    pub const FEW_RESETS: &str = "FewResets";
    /// OverlayLoss=True.
    pub const PACKETS_LOST: &str = "PacketsLost";
    /// OverlayLoss=False.
    pub const NO_LOSS: &str = "NoLoss";
}
