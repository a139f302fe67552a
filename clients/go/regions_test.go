package imprint

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// withRegions gives an update data_urls for several regions: region, url pairs in order.
func withRegions(u map[string]any, pairs ...string) map[string]any {
	var urls []map[string]string
	for i := 0; i+1 < len(pairs); i += 2 {
		urls = append(urls, map[string]string{"region": pairs[i], "url": pairs[i+1]})
	}
	u["data_urls"] = urls
	u["data_url"] = urls[0]["url"]
	return u
}

type seenMetrics struct {
	mu  sync.Mutex
	got []string // name{region}
}

func (m *seenMetrics) hook(name string, _ float64, labels map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got = append(m.got, name+"{"+labels["region"]+"}")
}

func (m *seenMetrics) has(s string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range m.got {
		if g == s {
			return true
		}
	}
	return false
}

func TestFailoverPastARefusedConnectionA5xxAndACorruptCopy(t *testing.T) {
	f := newFake(t)
	data := []byte("the payload of several regions")
	base := "/api/v1/topics/t.a/versions/4/data?region="
	u := withRegions(upd{version: 4, data: data}.json(), "eu", deadURL(t)+base+"eu", "ap", base+"ap", "sa", base+"sa", "us", base+"us")
	f.status[base+"ap"] = 503
	f.files[base+"sa"] = []byte("the payload of several regionZ") // same size, another hash
	f.files[base+"us"] = data
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["t.a"] == nil {
			return answer(obj{"t.a": u}, nil, 0)
		}
		return answer(nil, nil, 0)
	})
	m := &seenMetrics{}
	var payloadRegion string
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond, MetricsHook: m.hook})
	sub, err := Subscribe(bg, c, "t.a", "", func(p Payload) (string, error) {
		payloadRegion = p.Region
		return string(p.Data), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Get() != string(data) || sub.ServedRegion() != "us" || sub.Current().ServedRegion != "us" || payloadRegion != "us" {
		t.Fatalf("got %q from %q (payload %q)", sub.Get(), sub.ServedRegion(), payloadRegion)
	}
	var applied report
	eventually(t, "the applied report", 10*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if r, ok := p.Applied["t.a"]; ok {
				applied = r
				return true
			}
		}
		return false
	})
	if applied != (report{Version: 4, OK: true, Region: "us"}) {
		t.Fatalf("applied report %+v", applied)
	}
	var gets []string
	for _, r := range f.requests() {
		if r.Method == "GET" {
			gets = append(gets, r.Path)
		}
	}
	if strings.Join(gets, " ") != base+"ap "+base+"sa "+base+"us" {
		t.Fatalf("each region once, in order: %v", gets)
	}
	for _, want := range []string{MetricRegionDownloads + "{us}", MetricRegionFailovers + "{eu}", MetricRegionFailovers + "{ap}", MetricRegionFailovers + "{sa}"} {
		if !m.has(want) {
			t.Errorf("metric %s missing: %v", want, m.got)
		}
	}
}

func TestTheFirstRegionServesAndASingleDataURLHasNoRegion(t *testing.T) {
	f := newFake(t)
	base := "/api/v1/topics/t.a/versions/1/data?region="
	u := withRegions(upd{version: 1, data: []byte("eu first")}.json(), "eu", base+"eu", "us", base+"us")
	f.files[base+"eu"] = []byte("eu first")
	f.files["/api/v1/topics/t.b/versions/1/data"] = []byte("one region")
	v := upd{version: 1, data: []byte("one region"), topic: "t.b"}.json()
	f.setPoll(func(p gotPoll) reply {
		out := obj{}
		if p.Topics["t.a"] == nil {
			out["t.a"] = u
		}
		if _, asked := p.Topics["t.b"]; asked && p.Topics["t.b"] == nil {
			out["t.b"] = v
		}
		return answer(out, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond})
	a, err := c.SubscribeBytes(bg, "t.a", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.SubscribeBytes(bg, "t.b", nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Get()) != "eu first" || a.ServedRegion() != "eu" {
		t.Fatalf("t.a: %q from %q", a.Get(), a.ServedRegion())
	}
	if string(b.Get()) != "one region" || b.ServedRegion() != "" {
		t.Fatalf("t.b: %q from %q", b.Get(), b.ServedRegion())
	}
	if n := f.countPath(base + "us"); n != 0 {
		t.Fatalf("us asked %d times", n)
	}
}

func TestEveryRegionCorruptRejectsButAnUnreachableOneIsTransient(t *testing.T) {
	f := newFake(t)
	base := "/api/v1/topics/t.a/versions/2/data?region="
	f.files[base+"eu"] = []byte("payload")
	f.files[base+"us"] = []byte("payload")
	bad := withRegions(upd{version: 2, data: []byte("payload"), sha: strings.Repeat("0", 64)}.json(), "eu", base+"eu", "us", base+"us")
	f.setPoll(func(gotPoll) reply { return answer(obj{"t.a": bad}, nil, 0) })
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond, StartupFallback: -1})
	sub, err := c.SubscribeBytes(bg, "t.a", []byte("default"))
	if err != nil {
		t.Fatal(err)
	}
	var failed report
	eventually(t, "a failure report", 10*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if r, ok := p.Applied["t.a"]; ok && !r.OK {
				failed = r
				return true
			}
		}
		return false
	})
	if !strings.Contains(failed.Error, "checksum mismatch") || string(sub.Get()) != "default" {
		t.Fatalf("report %+v, value %q", failed, sub.Get())
	}
	_ = c.Close()

	// eu down, us corrupt: not the version's fault, so retried and never reported failed
	g := newFake(t)
	g.files[base+"us"] = []byte("payload")
	down := withRegions(upd{version: 3, data: []byte("payload"), sha: strings.Repeat("0", 64)}.json(), "eu", deadURL(t)+base+"eu", "us", base+"us")
	g.setPoll(func(gotPoll) reply { return answer(obj{"t.a": down}, nil, 0) })
	d := newClient(t, Options{URL: g.url(), LongPoll: 100 * time.Millisecond, StartupFallback: -1, MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	sub2, err := d.SubscribeBytes(bg, "t.a", []byte("default"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "retries", 10*time.Second, func() bool { return g.countPath(base+"us") >= 5 })
	if string(sub2.Get()) != "default" {
		t.Fatalf("value %q", sub2.Get())
	}
	_ = d.Close()
	for _, p := range g.pollsSeen() {
		if _, ok := p.Applied["t.a"]; ok {
			t.Fatalf("reported: %+v", p.Applied)
		}
	}
}
