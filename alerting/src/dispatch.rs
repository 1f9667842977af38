//! The dispatcher: routes alerts into groups (route + group labels), flushes each group after
//! `group_wait` and then every `group_interval`, drops inhibited alerts, decides per
//! integration whether the receiver needs to hear about the group (Alertmanager's notification
//! log: new firing alerts, newly resolved ones when `send_resolved`, or `repeat_interval`
//! passed), and puts the messages in the durable outbox. `now` is always an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use vigil_model::{LabelMatcher, Labels};

use crate::config::{AlertmanagerConfig, GlobalSection, ReceiverConfig};
use crate::manager::NotifiableAlert;
use crate::route::{collect_matchers, label_set_text, Route};
use crate::silence::Silences;
use crate::store::{rfc3339, AlertStore, NewNotification, NotificationLogEntry, StoreError};

/// Most groups kept at once; past it new groups are refused and counted.
pub const MAX_GROUPS: usize = 10_000;

/// Alertmanager's default `resolve_timeout`: a firing alert not refreshed for this long is
/// considered resolved.
pub const DEFAULT_RESOLVE_TIMEOUT_MS: i64 = 5 * 60 * 1000;

struct InhibitRule {
    source: Vec<LabelMatcher>,
    target: Vec<LabelMatcher>,
    equal: Vec<String>,
}

struct Group {
    key: String,
    receiver: String,
    group_labels: Labels,
    group_interval_ms: i64,
    repeat_interval_ms: i64,
    alerts: BTreeMap<u64, TrackedAlert>,
    next_flush_ms: i64,
}

#[derive(Clone)]
struct TrackedAlert {
    alert: NotifiableAlert,
    last_seen_ms: i64,
}

/// One alert in a webhook message (Alertmanager's webhook payload, version 4).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` while firing.
    pub ends_at: String,
    /// Link to the expression.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    /// 16 hex digits.
    pub fingerprint: String,
}

/// Alertmanager's webhook payload, version 4, field for field.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMessage {
    /// The receiver's name.
    pub receiver: String,
    /// `firing` if any alert fires, else `resolved`.
    pub status: &'static str,
    /// The alerts (at most `max_alerts`).
    pub alerts: Vec<WebhookAlert>,
    /// The group's labels.
    pub group_labels: BTreeMap<String, String>,
    /// Labels every alert shares.
    pub common_labels: BTreeMap<String, String>,
    /// Annotations every alert shares.
    pub common_annotations: BTreeMap<String, String>,
    /// Vigil's external URL.
    #[serde(rename = "externalURL")]
    pub external_url: String,
    /// Always "4".
    pub version: &'static str,
    /// The group key.
    pub group_key: String,
    /// How many alerts `max_alerts` left out.
    pub truncated_alerts: usize,
}

/// A group as `/api/v2/alerts/groups`-like listings show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSnapshot {
    /// The group key.
    pub group_key: String,
    /// The receiver.
    pub receiver: String,
    /// The group labels.
    pub labels: BTreeMap<String, String>,
    /// Fingerprints of its alerts.
    pub alerts: Vec<String>,
}

fn label_map(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|label| (label.name.clone(), label.value.clone()))
        .collect()
}

fn common<'a>(
    maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut common: Option<BTreeMap<String, String>> = None;
    for map in maps {
        common = Some(match common {
            None => map.clone(),
            Some(current) => current
                .into_iter()
                .filter(|(name, value)| map.get(name) == Some(value))
                .collect(),
        });
    }
    common.unwrap_or_default()
}

/// Groups alerts and turns due groups into outbox messages.
pub struct Dispatcher {
    route: Route,
    receivers: BTreeMap<String, ReceiverConfig>,
    inhibit_rules: Vec<InhibitRule>,
    groups: BTreeMap<String, Group>,
    alerts: BTreeMap<u64, TrackedAlert>,
    store: Arc<AlertStore>,
    external_url: String,
    resolve_timeout_ms: i64,
    refused_groups: u64,
    silences: Option<Silences>,
    global: GlobalSection,
}

impl Dispatcher {
    /// Builds a dispatcher for a validated config.
    ///
    /// # Errors
    /// A message naming a bad matcher (validated configs have none).
    pub fn new(
        config: &AlertmanagerConfig,
        store: Arc<AlertStore>,
        external_url: &str,
    ) -> Result<Dispatcher, String> {
        let route = Route::from_config(config)?;
        let receivers = config
            .effective_receivers()
            .into_iter()
            .map(|receiver| (receiver.name.clone(), receiver))
            .collect();
        let mut inhibit_rules = Vec::new();
        for rule in &config.inhibit_rules {
            inhibit_rules.push(InhibitRule {
                source: collect_matchers(
                    &rule.source_matchers,
                    &rule.source_match,
                    &rule.source_match_re,
                )?,
                target: collect_matchers(
                    &rule.target_matchers,
                    &rule.target_match,
                    &rule.target_match_re,
                )?,
                equal: rule.equal.clone(),
            });
        }
        let resolve_timeout_ms = config
            .global
            .resolve_timeout
            .map(|timeout| i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(DEFAULT_RESOLVE_TIMEOUT_MS);
        Ok(Dispatcher {
            route,
            receivers,
            inhibit_rules,
            groups: BTreeMap::new(),
            alerts: BTreeMap::new(),
            store,
            external_url: external_url.trim_end_matches('/').to_string(),
            resolve_timeout_ms,
            refused_groups: 0,
            silences: None,
            global: config.global.clone(),
        })
    }

    /// Mutes alerts matched by an active silence of `silences`.
    pub fn set_silences(&mut self, silences: Silences) {
        self.silences = Some(silences);
    }

    fn is_silenced(&self, alert: &NotifiableAlert, now_ms: i64) -> bool {
        self.silences
            .as_ref()
            .is_some_and(|silences| !silences.muting(&alert.labels, now_ms).is_empty())
    }

    /// Takes in the current alerts (firing, or resolved with an end time) at `now_ms`.
    pub fn insert(&mut self, alerts: Vec<NotifiableAlert>, now_ms: i64) {
        for alert in alerts {
            let tracked = TrackedAlert {
                alert,
                last_seen_ms: now_ms,
            };
            let labels = tracked.alert.labels.clone();
            let fingerprint = tracked.alert.fingerprint;
            for route in self.route.matching(&labels) {
                let group_labels = route.group_labels(&labels);
                let key = format!("{}:{}", route.key, label_set_text(&group_labels));
                if !self.groups.contains_key(&key) {
                    if tracked.alert.is_resolved(now_ms) {
                        // A resolved alert alone does not open a group: nobody was told it fired
                        // in this group, unless the log says so.
                        let told = self.receiver_log_has_firing(&key, &route.receiver, fingerprint);
                        if !told {
                            continue;
                        }
                    }
                    if self.groups.len() >= MAX_GROUPS {
                        self.refused_groups += 1;
                        tracing::error!(group = %key, "too many alert groups; alert not grouped");
                        continue;
                    }
                    let wait_ms = i64::try_from(route.group_wait.as_millis()).unwrap_or(i64::MAX);
                    self.groups.insert(
                        key.clone(),
                        Group {
                            key: key.clone(),
                            receiver: route.receiver.clone(),
                            group_labels,
                            group_interval_ms: i64::try_from(route.group_interval.as_millis())
                                .unwrap_or(i64::MAX),
                            repeat_interval_ms: i64::try_from(route.repeat_interval.as_millis())
                                .unwrap_or(i64::MAX),
                            alerts: BTreeMap::new(),
                            next_flush_ms: now_ms.saturating_add(wait_ms),
                        },
                    );
                }
                if let Some(group) = self.groups.get_mut(&key) {
                    group.alerts.insert(fingerprint, tracked.clone());
                }
            }
            self.alerts.insert(fingerprint, tracked);
        }
    }

    fn receiver_log_has_firing(&self, group_key: &str, receiver: &str, fingerprint: u64) -> bool {
        let Some(config) = self.receivers.get(receiver) else {
            return false;
        };
        let webhooks = (0..config.webhook_configs.len()).map(|index| ("webhook", index));
        let emails = (0..config.email_configs.len()).map(|index| ("email", index));
        webhooks.chain(emails).any(|(integration, index)| {
            let key = log_key(group_key, receiver, integration, index);
            matches!(self.store.notification_log(&key), Ok(Some(entry)) if entry.firing.contains(&fingerprint))
        })
    }

    /// Returns when the next group is due (ms).
    pub fn next_flush_ms(&self) -> Option<i64> {
        self.groups.values().map(|group| group.next_flush_ms).min()
    }

    /// Returns how many groups were refused past [`MAX_GROUPS`].
    pub fn refused_groups(&self) -> u64 {
        self.refused_groups
    }

    /// Returns the groups.
    pub fn groups(&self) -> Vec<GroupSnapshot> {
        self.groups
            .values()
            .map(|group| GroupSnapshot {
                group_key: group.key.clone(),
                receiver: group.receiver.clone(),
                labels: label_map(&group.group_labels),
                alerts: group
                    .alerts
                    .keys()
                    .map(|fingerprint| format!("{fingerprint:016x}"))
                    .collect(),
            })
            .collect()
    }

    fn effective(&self, tracked: &TrackedAlert, now_ms: i64) -> NotifiableAlert {
        let mut alert = tracked.alert.clone();
        if alert.ends_at_ms.is_none() && now_ms - tracked.last_seen_ms > self.resolve_timeout_ms {
            alert.ends_at_ms = Some(tracked.last_seen_ms + self.resolve_timeout_ms);
        }
        alert
    }

    fn is_inhibited(&self, alert: &NotifiableAlert, now_ms: i64) -> bool {
        !self.inhibited_by(alert, now_ms).is_empty()
    }

    /// Returns the fingerprints of the firing alerts that inhibit `alert` at `now_ms`: those
    /// matching the source side of an inhibit rule whose target side `alert` matches, with
    /// equal values of the rule's `equal` labels.
    fn inhibited_by(&self, alert: &NotifiableAlert, now_ms: i64) -> Vec<u64> {
        let mut sources = Vec::new();
        for rule in &self.inhibit_rules {
            if !rule
                .target
                .iter()
                .all(|matcher| matcher.matches(&alert.labels))
            {
                continue;
            }
            for source in self.alerts.values() {
                let source = self.effective(source, now_ms);
                let inhibits = source.fingerprint != alert.fingerprint
                    && !source.is_resolved(now_ms)
                    && rule
                        .source
                        .iter()
                        .all(|matcher| matcher.matches(&source.labels))
                    && rule
                        .equal
                        .iter()
                        .all(|name| source.labels.get(name) == alert.labels.get(name));
                if inhibits && !sources.contains(&source.fingerprint) {
                    sources.push(source.fingerprint);
                }
            }
        }
        sources
    }

    /// Flushes every group due at `now_ms` and returns how many messages went to the outbox.
    ///
    /// # Errors
    /// [`StoreError`] when the outbox or the notification log cannot be written; the group is
    /// then retried at its next interval.
    pub fn flush_due(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let due: Vec<String> = self
            .groups
            .values()
            .filter(|group| group.next_flush_ms <= now_ms)
            .map(|group| group.key.clone())
            .collect();
        let mut enqueued = 0;
        for key in due {
            enqueued += self.flush_group(&key, now_ms)?;
        }
        self.alerts.retain(|_, tracked| {
            tracked
                .alert
                .ends_at_ms
                .is_none_or(|ends| now_ms - ends <= crate::state::RESOLVED_RETENTION_MS)
        });
        Ok(enqueued)
    }

    fn flush_group(&mut self, key: &str, now_ms: i64) -> Result<usize, StoreError> {
        let Some(group) = self.groups.get(key) else {
            return Ok(0);
        };
        let alerts: Vec<NotifiableAlert> = group
            .alerts
            .values()
            .map(|tracked| self.effective(tracked, now_ms))
            .filter(|alert| !self.is_inhibited(alert, now_ms) && !self.is_silenced(alert, now_ms))
            .collect();
        if alerts.is_empty() {
            // Everything is muted: as Alertmanager, neither send nor log anything.
            let resolve_timeout_ms = self.resolve_timeout_ms;
            if let Some(group) = self.groups.get_mut(key) {
                group.next_flush_ms = now_ms.saturating_add(group.group_interval_ms);
                group.alerts.retain(|_, tracked| {
                    tracked.alert.ends_at_ms.is_none()
                        && now_ms - tracked.last_seen_ms <= resolve_timeout_ms
                });
                if group.alerts.is_empty() {
                    self.groups.remove(key);
                }
            }
            return Ok(0);
        }
        let firing: BTreeSet<u64> = alerts
            .iter()
            .filter(|alert| !alert.is_resolved(now_ms))
            .map(|alert| alert.fingerprint)
            .collect();
        let resolved: BTreeSet<u64> = alerts
            .iter()
            .filter(|alert| alert.is_resolved(now_ms))
            .map(|alert| alert.fingerprint)
            .collect();
        let receiver = self
            .receivers
            .get(&group.receiver)
            .cloned()
            .unwrap_or_default();
        let mut log_entries = Vec::new();
        let mut notifications = Vec::new();
        for (index, webhook) in receiver.webhook_configs.iter().enumerate() {
            let log = log_key(key, &group.receiver, "webhook", index);
            let entry = self.store.notification_log(&log)?;
            if !needs_update(
                entry.as_ref(),
                &firing,
                &resolved,
                webhook.send_resolved,
                group.repeat_interval_ms,
                now_ms,
            ) {
                continue;
            }
            let to_send: Vec<&NotifiableAlert> = alerts
                .iter()
                .filter(|alert| webhook.send_resolved || !alert.is_resolved(now_ms))
                .collect();
            log_entries.push((
                log,
                NotificationLogEntry {
                    firing: firing.iter().copied().collect(),
                    resolved: resolved.iter().copied().collect(),
                    timestamp_ms: now_ms,
                },
            ));
            if to_send.is_empty() {
                continue;
            }
            let message = self.webhook_message(
                &group.receiver,
                key,
                &group.group_labels,
                &to_send,
                webhook.max_alerts,
                now_ms,
            );
            notifications.push(NewNotification {
                receiver: group.receiver.clone(),
                integration: "webhook".to_string(),
                integration_index: index,
                group_key: key.to_string(),
                payload: serde_json::to_string(&message).unwrap_or_default(),
            });
        }
        for (index, email) in receiver.email_configs.iter().enumerate() {
            let log = log_key(key, &group.receiver, "email", index);
            let entry = self.store.notification_log(&log)?;
            if !needs_update(
                entry.as_ref(),
                &firing,
                &resolved,
                email.send_resolved,
                group.repeat_interval_ms,
                now_ms,
            ) {
                continue;
            }
            let to_send: Vec<&NotifiableAlert> = alerts
                .iter()
                .filter(|alert| email.send_resolved || !alert.is_resolved(now_ms))
                .collect();
            log_entries.push((
                log,
                NotificationLogEntry {
                    firing: firing.iter().copied().collect(),
                    resolved: resolved.iter().copied().collect(),
                    timestamp_ms: now_ms,
                },
            ));
            if to_send.is_empty() {
                continue;
            }
            let label_maps: Vec<BTreeMap<String, String>> = to_send
                .iter()
                .map(|alert| label_map(&alert.labels))
                .collect();
            let common_labels = common(label_maps.iter());
            let content = crate::email::render(
                email,
                &self.global,
                &group.group_labels,
                &common_labels,
                &to_send,
                &self.external_url,
                now_ms,
            );
            notifications.push(NewNotification {
                receiver: group.receiver.clone(),
                integration: "email".to_string(),
                integration_index: index,
                group_key: key.to_string(),
                payload: serde_json::to_string(&content).unwrap_or_default(),
            });
        }
        self.store
            .commit_flush(&log_entries, &notifications, now_ms)?;
        if let Some(group) = self.groups.get_mut(key) {
            group.next_flush_ms = now_ms.saturating_add(group.group_interval_ms);
            for fingerprint in &resolved {
                let unchanged = group
                    .alerts
                    .get(fingerprint)
                    .is_some_and(|tracked| tracked.alert.ends_at_ms.is_some());
                if unchanged {
                    group.alerts.remove(fingerprint);
                }
            }
            if group.alerts.is_empty() {
                self.groups.remove(key);
            }
        }
        Ok(notifications.len())
    }

    fn webhook_message(
        &self,
        receiver: &str,
        group_key: &str,
        group_labels: &Labels,
        alerts: &[&NotifiableAlert],
        max_alerts: usize,
        now_ms: i64,
    ) -> WebhookMessage {
        let webhook_alerts: Vec<WebhookAlert> = alerts
            .iter()
            .map(|alert| {
                let resolved = alert.is_resolved(now_ms);
                WebhookAlert {
                    status: if resolved { "resolved" } else { "firing" },
                    labels: label_map(&alert.labels),
                    annotations: alert.annotations.clone(),
                    starts_at: rfc3339(alert.starts_at_ms),
                    ends_at: match alert.ends_at_ms {
                        Some(ends) if resolved => rfc3339(ends),
                        _ => "0001-01-01T00:00:00Z".to_string(),
                    },
                    generator_url: alert.generator_url.clone(),
                    fingerprint: format!("{:016x}", alert.fingerprint),
                }
            })
            .collect();
        let common_labels = common(webhook_alerts.iter().map(|alert| &alert.labels));
        let common_annotations = common(webhook_alerts.iter().map(|alert| &alert.annotations));
        let status = if webhook_alerts.iter().any(|alert| alert.status == "firing") {
            "firing"
        } else {
            "resolved"
        };
        let total = webhook_alerts.len();
        let mut kept = webhook_alerts;
        if max_alerts > 0 && total > max_alerts {
            kept.truncate(max_alerts);
        }
        WebhookMessage {
            receiver: receiver.to_string(),
            status,
            truncated_alerts: total - kept.len(),
            alerts: kept,
            group_labels: label_map(group_labels),
            common_labels,
            common_annotations,
            external_url: self.external_url.clone(),
            version: "4",
            group_key: group_key.to_string(),
        }
    }

    /// Returns every alert that has not ended in Alertmanager API v2's `GettableAlert` shape.
    pub fn api_alerts(&self, now_ms: i64) -> Vec<serde_json::Value> {
        self.alerts
            .values()
            .filter_map(|tracked| self.api_alert(tracked, now_ms))
            .collect()
    }

    /// Returns `tracked` in API v2's `GettableAlert` shape, or `None` once it is resolved
    /// (Alertmanager lists only alerts that have not ended).
    fn api_alert(&self, tracked: &TrackedAlert, now_ms: i64) -> Option<serde_json::Value> {
        let alert = self.effective(tracked, now_ms);
        if alert.is_resolved(now_ms) {
            return None;
        }
        let silenced_by = self
            .silences
            .as_ref()
            .map(|silences| silences.muting(&alert.labels, now_ms))
            .unwrap_or_default();
        let inhibited_by: Vec<String> = self
            .inhibited_by(&alert, now_ms)
            .into_iter()
            .map(|fingerprint| format!("{fingerprint:016x}"))
            .collect();
        let state = if silenced_by.is_empty() && inhibited_by.is_empty() {
            "active"
        } else {
            "suppressed"
        };
        let receivers: Vec<serde_json::Value> = self
            .route
            .matching(&alert.labels)
            .iter()
            .map(|route| serde_json::json!({"name": route.receiver}))
            .collect();
        Some(serde_json::json!({
            "labels": label_map(&alert.labels),
            "annotations": alert.annotations,
            "startsAt": rfc3339(alert.starts_at_ms),
            "endsAt": alert.ends_at_ms.map(rfc3339).unwrap_or_else(|| rfc3339(tracked.last_seen_ms + self.resolve_timeout_ms)),
            "updatedAt": rfc3339(tracked.last_seen_ms),
            "generatorURL": alert.generator_url,
            "fingerprint": format!("{:016x}", alert.fingerprint),
            "receivers": receivers,
            "status": {"state": state, "silencedBy": silenced_by, "inhibitedBy": inhibited_by},
        }))
    }

    /// Returns the groups in Alertmanager API v2's `AlertGroup` shape, each with its alerts
    /// that have not ended (groups left with none are not listed).
    pub fn api_groups(&self, now_ms: i64) -> Vec<serde_json::Value> {
        self.groups
            .values()
            .filter_map(|group| {
                let alerts: Vec<serde_json::Value> = group
                    .alerts
                    .values()
                    .filter_map(|tracked| self.api_alert(tracked, now_ms))
                    .collect();
                if alerts.is_empty() {
                    return None;
                }
                Some(serde_json::json!({
                    "labels": label_map(&group.group_labels),
                    "receiver": {"name": group.receiver},
                    "alerts": alerts,
                }))
            })
            .collect()
    }

    /// Returns the receivers by name (for the outbox worker).
    pub fn receivers(&self) -> &BTreeMap<String, ReceiverConfig> {
        &self.receivers
    }

    /// Returns the external URL used in messages.
    pub fn external_url(&self) -> &str {
        &self.external_url
    }

    /// Returns the `global:` section (SMTP defaults, for the outbox worker).
    pub fn global(&self) -> &GlobalSection {
        &self.global
    }
}

fn log_key(group_key: &str, receiver: &str, integration: &str, index: usize) -> String {
    format!("{group_key}\u{1}{receiver}\u{1}{integration}\u{1}{index}")
}

/// Alertmanager's decision whether a receiver must hear about a group again.
fn needs_update(
    entry: Option<&NotificationLogEntry>,
    firing: &BTreeSet<u64>,
    resolved: &BTreeSet<u64>,
    send_resolved: bool,
    repeat_interval_ms: i64,
    now_ms: i64,
) -> bool {
    let Some(entry) = entry else {
        return !firing.is_empty();
    };
    let previously_firing: BTreeSet<u64> = entry.firing.iter().copied().collect();
    if !firing.is_subset(&previously_firing) {
        return true;
    }
    if firing.is_empty() {
        return !entry.firing.is_empty();
    }
    let previously_resolved: BTreeSet<u64> = entry.resolved.iter().copied().collect();
    if send_resolved && !resolved.is_subset(&previously_resolved) {
        return true;
    }
    entry.timestamp_ms < now_ms.saturating_sub(repeat_interval_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
route:
  receiver: team
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
receivers:
  - name: team
    webhook_configs:
      - url: http://127.0.0.1:9/hook
inhibit_rules:
  - source_matchers: [severity="page"]
    target_matchers: [severity="ticket"]
    equal: [service]
"#;

    fn alert(name: &str, service: &str, severity: &str, ends: Option<i64>) -> NotifiableAlert {
        let labels = Labels::from_pairs([
            ("alertname", name),
            ("service", service),
            ("severity", severity),
        ]);
        NotifiableAlert {
            fingerprint: labels.fingerprint(),
            labels,
            annotations: BTreeMap::from([("summary".to_string(), "s".to_string())]),
            starts_at_ms: 1_000,
            ends_at_ms: ends,
            generator_url: "http://vigil/graph".to_string(),
            value: 1.0,
        }
    }

    fn dispatcher() -> (Dispatcher, Arc<AlertStore>) {
        dispatcher_with(CONFIG)
    }

    fn dispatcher_with(config: &str) -> (Dispatcher, Arc<AlertStore>) {
        let store = Arc::new(AlertStore::in_memory().unwrap());
        let config = AlertmanagerConfig::from_yaml(config).unwrap();
        (
            Dispatcher::new(&config, store.clone(), "http://vigil:7080/").unwrap(),
            store,
        )
    }

    fn messages(store: &AlertStore) -> Vec<serde_json::Value> {
        let mut rows = store.notifications(None, 100).unwrap();
        rows.reverse();
        rows.iter()
            .map(|row| serde_json::from_str(&row.payload).unwrap())
            .collect()
    }

    #[test]
    fn three_alerts_of_a_group_make_one_message_after_group_wait() {
        let (mut dispatcher, store) = dispatcher();
        let alerts = vec![
            alert("HighErrorRate", "a", "page", None),
            alert("HighErrorRate", "b", "page", None),
            alert("HighErrorRate", "c", "page", None),
        ];
        dispatcher.insert(alerts.clone(), 0);
        assert_eq!(dispatcher.flush_due(29_999).unwrap(), 0);
        assert_eq!(dispatcher.flush_due(30_000).unwrap(), 1);
        let sent = messages(&store);
        let message = &sent[0];
        assert_eq!(message["version"], "4");
        assert_eq!(message["status"], "firing");
        assert_eq!(message["receiver"], "team");
        assert_eq!(message["groupKey"], "{}:{alertname=\"HighErrorRate\"}");
        assert_eq!(message["groupLabels"]["alertname"], "HighErrorRate");
        assert_eq!(message["commonLabels"]["severity"], "page");
        assert!(message["commonLabels"].get("service").is_none());
        assert_eq!(message["commonAnnotations"]["summary"], "s");
        assert_eq!(message["externalURL"], "http://vigil:7080");
        assert_eq!(message["alerts"].as_array().unwrap().len(), 3);
        assert_eq!(message["truncatedAlerts"], 0);
        let first = &message["alerts"][0];
        for field in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(first.get(field).is_some(), "{field}");
        }
        assert_eq!(first["endsAt"], "0001-01-01T00:00:00Z");

        // Unchanged: nothing until the repeat interval.
        dispatcher.insert(alerts.clone(), 300_000);
        assert_eq!(dispatcher.flush_due(330_000).unwrap(), 0);
        // One resolves: send_resolved (default true) makes a message at the next interval.
        let mut changed = alerts.clone();
        changed[0].ends_at_ms = Some(400_000);
        dispatcher.insert(changed, 400_000);
        assert_eq!(dispatcher.flush_due(630_000).unwrap(), 1);
        let sent = messages(&store);
        let statuses: Vec<&str> = sent[1]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|alert| alert["status"].as_str().unwrap())
            .collect();
        assert!(statuses.contains(&"resolved"));
        assert_eq!(sent[1]["status"], "firing");
        // After the repeat interval the still-firing alerts are sent again.
        dispatcher.insert(alerts[1..].to_vec(), 640_000 + 4 * 3_600_000);
        assert_eq!(dispatcher.flush_due(640_000 + 4 * 3_600_000).unwrap(), 1);
    }

    #[test]
    fn max_alerts_truncates_and_counts() {
        let config = CONFIG.replace("hook\n", "hook\n        max_alerts: 2\n");
        let (mut dispatcher, store) = dispatcher_with(&config);
        dispatcher.insert(
            vec![
                alert("A", "a", "page", None),
                alert("A", "b", "page", None),
                alert("A", "c", "page", None),
            ],
            0,
        );
        dispatcher.flush_due(30_000).unwrap();
        let sent = messages(&store);
        assert_eq!(sent[0]["alerts"].as_array().unwrap().len(), 2);
        assert_eq!(sent[0]["truncatedAlerts"], 1);
    }

    #[test]
    fn all_resolved_sends_a_resolved_message_once() {
        let (mut dispatcher, store) = dispatcher();
        dispatcher.insert(vec![alert("A", "a", "page", None)], 0);
        dispatcher.flush_due(30_000).unwrap();
        dispatcher.insert(vec![alert("A", "a", "page", Some(40_000))], 40_000);
        assert_eq!(dispatcher.flush_due(330_000).unwrap(), 1);
        let sent = messages(&store);
        assert_eq!(sent[1]["status"], "resolved");
        assert_ne!(sent[1]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        // The rule manager keeps sending the resolved alert; nobody hears twice.
        dispatcher.insert(vec![alert("A", "a", "page", Some(40_000))], 340_000);
        assert_eq!(dispatcher.flush_due(700_000).unwrap(), 0);
    }

    #[test]
    fn a_ticket_is_inhibited_while_a_page_of_the_same_service_fires() {
        let (mut dispatcher, store) = dispatcher();
        dispatcher.insert(
            vec![
                alert("Slow", "a", "ticket", None),
                alert("Down", "a", "page", None),
                alert("Slow", "b", "ticket", None),
            ],
            0,
        );
        dispatcher.flush_due(30_000).unwrap();
        let sent = messages(&store);
        let services: Vec<(&str, &str)> = sent
            .iter()
            .flat_map(|message| message["alerts"].as_array().unwrap().iter())
            .map(|alert| {
                (
                    alert["labels"]["alertname"].as_str().unwrap(),
                    alert["labels"]["service"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(services.contains(&("Down", "a")));
        assert!(services.contains(&("Slow", "b")));
        assert!(!services.contains(&("Slow", "a")));
    }

    #[test]
    fn a_restart_does_not_repeat_a_firing_notification_inside_repeat_interval() {
        let store = Arc::new(AlertStore::in_memory().unwrap());
        let config = AlertmanagerConfig::from_yaml(CONFIG).unwrap();
        let mut first = Dispatcher::new(&config, store.clone(), "http://vigil").unwrap();
        first.insert(vec![alert("A", "a", "page", None)], 0);
        assert_eq!(first.flush_due(30_000).unwrap(), 1);
        drop(first);
        let mut second = Dispatcher::new(&config, store.clone(), "http://vigil").unwrap();
        second.insert(vec![alert("A", "a", "page", None)], 60_000);
        assert_eq!(second.flush_due(90_000).unwrap(), 0);
    }

    #[test]
    fn a_firing_alert_not_refreshed_resolves_after_resolve_timeout() {
        let (mut dispatcher, store) = dispatcher();
        dispatcher.insert(vec![alert("A", "a", "page", None)], 0);
        dispatcher.flush_due(30_000).unwrap();
        assert_eq!(dispatcher.flush_due(330_000).unwrap(), 1);
        assert_eq!(messages(&store)[1]["status"], "resolved");
    }
}
