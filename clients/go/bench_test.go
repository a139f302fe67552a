package imprint

// A measurement, not a check: the Go client's idle CPU and memory with 100 subscribed
// topics, and the propagation time from a publish to the client's listener, against the
// real server (server_test.go's fixture). Run it with
//
//	IMPRINT_GO_BENCH=1 IMPRINT_SERVER_BIN=... go test -run TestRealBenchIdleAndPropagation -v
//
// (IMPRINT_GO_BENCH_TOPICS, IMPRINT_GO_BENCH_IDLE_S and IMPRINT_GO_BENCH_PUBLISHES change
// the 100 topics, 30 s idle window and 50 publishes). Without IMPRINT_GO_BENCH it is skipped.

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rssKiB(field string) int {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	return 0
}

func TestRealBenchIdleAndPropagation(t *testing.T) {
	if os.Getenv("IMPRINT_GO_BENCH") == "" {
		t.Skip("a measurement: set IMPRINT_GO_BENCH=1 to run it")
	}
	s := server(t)
	n := envInt("IMPRINT_GO_BENCH_TOPICS", 100)
	idle := time.Duration(envInt("IMPRINT_GO_BENCH_IDLE_S", 30)) * time.Second
	publishes := envInt("IMPRINT_GO_BENCH_PUBLISHES", 50)
	topics := make([]string, n)
	for i := range topics {
		topics[i] = s.topic(t, fmt.Sprintf("bench%d", i))
		s.publish(t, topics[i], fmt.Sprintf(`{"topic": %d, "n": 0}`, i))
	}
	runtime.GC()
	rssBefore := rssKiB("VmRSS")
	c := newClient(t, Options{URL: s.url, Instance: "go-bench", Logger: func(Level, string) {}})
	subs := make([]*Subscription[map[string]int], n)
	start := time.Now()
	for i, topic := range topics {
		sub, err := SubscribeJSON(bg, c, topic, map[string]int{})
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = sub
	}
	subscribed := time.Since(start)
	for i, sub := range subs {
		if v, _ := sub.Version(); v != 1 {
			t.Fatalf("topic %d not delivered: v%d", i, v)
		}
	}
	time.Sleep(2 * time.Second) // settle into the long poll
	runtime.GC()
	cpu0, wall0 := cpuTime(), time.Now()
	polls0 := c.Metrics().Get(MetricLastPollSuccess)
	time.Sleep(idle)
	cpuIdle, wallIdle := cpuTime()-cpu0, time.Since(wall0)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, hwm := rssKiB("VmRSS"), rssKiB("VmHWM")

	heard := make(chan time.Time, 1)
	target := subs[0]
	target.OnChange(func(map[string]int) {
		select {
		case heard <- time.Now():
		default:
		}
	})
	var lat []time.Duration
	for i := 1; i <= publishes; i++ {
		sent := time.Now()
		s.publish(t, topics[0], fmt.Sprintf(`{"topic": 0, "n": %d}`, i))
		select {
		case at := <-heard:
			lat = append(lat, at.Sub(sent))
		case <-time.After(20 * time.Second):
			t.Fatalf("publish %d not heard within 20 s", i)
		}
		time.Sleep(100 * time.Millisecond)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1)+0.5)] }
	t.Logf("go client, %d topics: subscribed in %v", n, subscribed.Round(time.Millisecond))
	t.Logf("idle %v: CPU %v (%.3f%% of one core); RSS %d KiB (before the client %d KiB, peak %d KiB); Go heap in use %d KiB, %d goroutines; last poll gauge moved %v",
		wallIdle.Round(time.Millisecond), cpuIdle, 100*cpuIdle.Seconds()/wallIdle.Seconds(), rss, rssBefore, hwm,
		ms.HeapInuse/1024, runtime.NumGoroutine(), c.Metrics().Get(MetricLastPollSuccess) != polls0)
	t.Logf("propagation publish -> listener over %d publishes: p50 %v, p95 %v, max %v (the publish call's own time included)",
		len(lat), pct(0.5).Round(100*time.Microsecond), pct(0.95).Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
}
