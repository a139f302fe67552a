package imprint

import (
	"sort"
	"strings"
	"sync"
)

// Metric names, the Rust client's:
//
//   - imprint_client_version{topic}: gauge, the version held
//   - imprint_client_last_poll_success_seconds: gauge, unix time of the last good poll
//   - imprint_client_apply_failures_total{topic}: counter
//   - imprint_client_poll_errors_total{kind}: counter; kind is network, server, client or download
//   - imprint_client_updates_applied_total{topic}: counter
//   - imprint_client_region_downloads_total{region}: counter, downloads from each region
//   - imprint_client_region_failovers_total{region}: counter, regions skipped (down, 5xx, corrupt)
const (
	MetricVersion         = "imprint_client_version"
	MetricLastPollSuccess = "imprint_client_last_poll_success_seconds"
	MetricApplyFailures   = "imprint_client_apply_failures_total"
	MetricPollErrors      = "imprint_client_poll_errors_total"
	MetricUpdatesApplied  = "imprint_client_updates_applied_total"
	MetricRegionDownloads = "imprint_client_region_downloads_total"
	MetricRegionFailovers = "imprint_client_region_failovers_total"
)

// Metrics keeps the client's counters and gauges in memory and hands every update to the
// Options' MetricsHook.
type Metrics struct {
	hook   func(name string, value float64, labels map[string]string)
	log    func(Level, string)
	mu     sync.Mutex
	values map[string]float64
}

func newMetrics(hook func(string, float64, map[string]string), log func(Level, string)) *Metrics {
	return &Metrics{hook: hook, log: log, values: map[string]float64{}}
}

// key is name{k=v,...} with the labels sorted, as Prometheus prints a series.
func metricKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + labels[k])
	}
	b.WriteByte('}')
	return b.String()
}

func (m *Metrics) emit(name string, v float64, labels map[string]string) {
	if m.hook == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			m.log(LevelError, "imprint: the metrics hook panicked")
		}
	}()
	m.hook(name, v, labels)
}

func (m *Metrics) gauge(name string, v float64, labels map[string]string) {
	m.mu.Lock()
	m.values[metricKey(name, labels)] = v
	m.mu.Unlock()
	m.emit(name, v, labels)
}

func (m *Metrics) count(name string, labels map[string]string) {
	k := metricKey(name, labels)
	m.mu.Lock()
	m.values[k]++
	v := m.values[k]
	m.mu.Unlock()
	m.emit(name, v, labels)
}

// Get returns a series' value (0 when it was never set), labels as "key", "value" pairs:
// Get(MetricPollErrors, "kind", "network").
func (m *Metrics) Get(name string, labelPairs ...string) float64 {
	labels := map[string]string{}
	for i := 0; i+1 < len(labelPairs); i += 2 {
		labels[labelPairs[i]] = labelPairs[i+1]
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.values[metricKey(name, labels)]
}

// Snapshot returns every series, keyed like name{k=v}.
func (m *Metrics) Snapshot() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]float64, len(m.values))
	for k, v := range m.values {
		out[k] = v
	}
	return out
}
