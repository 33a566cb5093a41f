//! The chart's monitoring (off by default): the PrometheusRule's alerts and
//! the Grafana dashboard. Rendered with the real `helm template`; every
//! expression is parsed by a PromQL parser, and every metric it names must
//! be one weir exports — taken from the code's own registries (the agent's
//! collectors, the PodFlow writer's, the controller's), rendered the way a
//! scrape of /metrics renders them, not from a hand-written list.
//!
//! Needs helm (scripts/controlplane-tools.sh builds it); fails saying so
//! when it is missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_yaml_ng::Value;
use weir_e2e::controlplane::Tools;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weir")
}

/// The metric names a scrape of weir's agent and controller shows: counters
/// as `<name>_total`, histograms as `_bucket`/`_sum`/`_count`, gauges as is.
fn exported_metrics() -> BTreeSet<String> {
    use weir_operator::agent::{metrics, writer};
    let mut registry = metrics::registry(Default::default());
    registry.register_collector(Box::new(writer::WriterCollector(Arc::new(
        writer::WriterStats::default(),
    ))));
    let agent = metrics::render(&registry);
    let controller = weir_operator::controller::metrics::ControllerMetrics::new();
    // Alert families print once a profile's alerts used them.
    controller.alert_raised("ns", "profile", "NewPeer");
    controller.set_firing("ns", "profile", "TCPResets", 1);
    controller.alert_event("ns", "namespace_budget");
    let controller = controller.render();
    let mut names = BTreeSet::new();
    for line in agent.lines().chain(controller.lines()) {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(
        names.contains("weir_pod_bytes_total") && names.contains("weir_controller_leader"),
        "the registries rendered no weir metrics:\n{agent}\n{controller}"
    );
    names
}

struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = ();
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        match expr {
            Expr::VectorSelector(vs) => {
                self.0.extend(vs.name.clone());
            }
            Expr::MatrixSelector(ms) => {
                self.0.extend(ms.vs.name.clone());
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Parses `expr` and returns the metric names it selects.
fn metric_names(expr: &str, what: &str) -> BTreeSet<String> {
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {e}\n{expr}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    assert!(!names.0.is_empty(), "{what} selects no metric: {expr}");
    names.0
}

fn helm_template(set: &[&str]) -> Vec<Value> {
    let tools = Tools::locate().expect("the control plane tools (helm) are needed");
    let helm = tools.helm().expect("helm is needed");
    let home = std::env::temp_dir().join(format!("weir-monitoring-helm-{}", std::process::id()));
    let mut cmd = Command::new(helm);
    cmd.env_remove("KUBECONFIG")
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(["template", "weir"])
        .arg(chart_dir())
        .args(["--namespace", "weir-system"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("running helm");
    assert!(
        out.status.success(),
        "helm template {set:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("helm renders YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize as _;

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn dashboard_configmaps(docs: &[Value]) -> Vec<&Value> {
    of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"))
        .collect()
}

#[test]
fn monitoring_is_off_by_default() {
    let docs = helm_template(&[]);
    assert!(of_kind(&docs, "PrometheusRule").is_empty());
    assert!(of_kind(&docs, "PodMonitor").is_empty());
    assert!(dashboard_configmaps(&docs).is_empty());
}

#[test]
fn prometheus_rules_parse_and_name_only_metrics_weir_exports() {
    let exported = exported_metrics();
    let docs = helm_template(&[
        "monitoring.prometheusRule.enabled=true",
        "monitoring.prometheusRule.alertLabels.team=net",
        "monitoring.podMonitor.enabled=true",
    ]);
    let rules = of_kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let rule = rules[0];
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let pod_monitor = of_kind(&docs, "PodMonitor");
    assert_eq!(pod_monitor.len(), 1);
    assert_eq!(
        pod_monitor[0]["spec"]["podMetricsEndpoints"][0]["honorLabels"].as_bool(),
        Some(true),
        "weir's namespace/pod labels must survive the scrape"
    );

    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    let groups = rule["spec"]["groups"].as_sequence().expect("spec.groups");
    assert!(!groups.is_empty());
    for group in groups {
        let name = group["name"].as_str().expect("a group has a name");
        let rules = group["rules"].as_sequence().expect("a group has rules");
        assert!(!rules.is_empty(), "group {name} is empty");
        for r in rules {
            let alert = r["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_owned();
            assert!(alerts.insert(alert.clone()), "alert {alert} twice");
            let expr = r["expr"].as_str().expect("an expr");
            used.extend(metric_names(expr, &alert));
            if let Some(f) = r.get("for") {
                let f = f.as_str().expect("for is a duration string");
                promql_parser::util::parse_duration(f)
                    .unwrap_or_else(|e| panic!("{alert}: for {f:?}: {e}"));
            }
            assert!(
                matches!(
                    r["labels"]["severity"].as_str(),
                    Some("info" | "warning" | "critical")
                ),
                "{alert}: severity"
            );
            assert_eq!(
                r["labels"]["team"].as_str(),
                Some("net"),
                "{alert}: alertLabels"
            );
            assert!(
                r["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{alert}: summary"
            );
            assert!(
                r["annotations"]["description"].as_str().is_some(),
                "{alert}: description"
            );
        }
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules use metrics weir does not export: {unknown:?} (exported: {exported:?})"
    );
    // The conditions the chart promises.
    for alert in [
        "WeirOverlayPacketLoss",
        "WeirMapPressure",
        "WeirPodFlowWriterBacklog",
        "WeirTrafficSpike",
        "WeirNewTalker",
        "WeirNewPeer",
        "WeirTCPResets",
        "WeirConversationRateSpike",
        "WeirConversationOverlayLoss",
        "WeirAlertEventsHeldBack",
    ] {
        assert!(alerts.contains(alert), "no {alert} among {alerts:?}");
    }
}

#[test]
fn grafana_dashboard_is_valid_json_and_every_query_names_a_metric_weir_exports() {
    let exported = exported_metrics();
    let docs = helm_template(&["monitoring.grafanaDashboard.enabled=true"]);
    let maps = dashboard_configmaps(&docs);
    assert_eq!(
        maps.len(),
        1,
        "one ConfigMap labelled grafana_dashboard=\"1\""
    );
    let json = maps[0]["data"]["weir.json"]
        .as_str()
        .expect("data.weir.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        dashboard["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );

    // Grafana's variables, as a query would see them once substituted.
    let substitute = |q: &str| {
        q.replace("$__rate_interval", "5m")
            .replace("$namespace", ".*")
    };
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels {
        let id = p["id"].as_i64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("a panel title");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(
                !expr.contains('$')
                    || expr.contains("$__rate_interval")
                    || expr.contains("$namespace"),
                "{title}: unknown variable in {expr}"
            );
            used.extend(metric_names(&substitute(expr), title));
            queries += 1;
        }
    }
    // Template variables query weir's metrics too.
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(def) = v["definition"].as_str()
            && let Some(inner) = def.strip_prefix("label_values(")
        {
            let metric = inner.split([',', ')']).next().unwrap().trim();
            used.extend(metric_names(metric, "a template variable"));
        }
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics weir does not export: {unknown:?} (exported: {exported:?})"
    );
    // What the dashboard is for: traffic, overlay, map pressure, writer.
    for metric in [
        "weir_pod_bytes_total",
        "weir_vxlan_packets_total",
        "weir_vxlan_bytes_total",
        "weir_map_pressure_total",
        "weir_podflow_writer_oldest_pending_seconds",
    ] {
        assert!(used.contains(metric), "the dashboard shows no {metric}");
    }
    assert!(queries >= 10, "{queries} queries");
}
