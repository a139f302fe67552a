package imprint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Version of this client, sent in its User-Agent.
const Version = "0.1.0"

// Client keeps a process's subscriptions up to date with one background long poll.
// Build it with New, subscribe with Subscribe, SubscribeJSON, SubscribeBytes or
// SubscribeFile, and Close it when done. It is safe for concurrent use.
type Client struct {
	s        settings
	bases    []string
	current  atomic.Int32
	token    string
	decrypt  DecryptFunc // Options.Decrypt (encryption.go)
	instance string
	labels   map[string]string
	http     *http.Client
	store    *store
	snaps    *snapshots
	metrics  *Metrics
	logf     func(Level, string)

	ctx    context.Context // cancelled by Close: aborts every request in flight
	cancel context.CancelFunc

	mu         sync.Mutex
	slots      map[string]slot
	generation uint64
	wake       chan struct{} // closed (and replaced) when a topic is subscribed
	stopped    bool
	pollerUp   bool
	pollerDone chan struct{}
	closeOnce  sync.Once

	cacheWarned atomic.Bool
}

// New checks opts and builds a Client. The background poll starts with the first
// subscription.
func New(opts Options) (*Client, error) {
	if strings.TrimSpace(opts.URL) == "" {
		return nil, &ConfigError{Msg: "the server URL is required"}
	}
	var bases []string
	for _, raw := range append([]string{opts.URL}, opts.FallbackURLs...) {
		b, err := serverBase(raw)
		if err != nil {
			return nil, err
		}
		bases = append(bases, b)
	}
	instance := opts.Instance
	if instance == "" {
		instance = defaultInstance()
	}
	if err := checkInstance(instance); err != nil {
		return nil, err
	}
	labels := make(map[string]string, len(opts.Labels))
	for k, v := range opts.Labels {
		labels[k] = v
	}
	if err := CheckLabels(labels); err != nil {
		return nil, err
	}
	logf := opts.Logger
	if logf == nil {
		logf = func(l Level, msg string) {
			if l >= LevelWarn {
				log.Printf("%s %s", l, msg)
			}
		}
	}
	var snaps *snapshots
	if opts.SnapshotStore != "" {
		var err error
		if snaps, err = openSnapshots(opts.SnapshotStore, opts.SnapshotURL); err != nil {
			return nil, err
		}
		if opts.SnapshotKeyring != "" {
			if snaps.keyring, err = loadKeyring(opts.SnapshotKeyring); err != nil {
				return nil, err
			}
		}
	} else if opts.SnapshotURL != nil {
		return nil, &ConfigError{Msg: "SnapshotURL needs an https:// SnapshotStore"}
	} else if opts.SnapshotKeyring != "" {
		return nil, &ConfigError{Msg: "SnapshotKeyring needs a SnapshotStore (it opens sealed snapshots)"}
	}
	st, err := newStore(opts.CacheDir)
	if err != nil {
		return nil, err
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
			ForceAttemptHTTP2:     true,
		}}
	}
	if snaps != nil && snaps.base != nil {
		snaps.http = hc // the same proxies and TLS roots (never the token: it is not a header of hc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		s:          opts.settings(),
		bases:      bases,
		token:      opts.Token,
		instance:   instance,
		labels:     labels,
		http:       hc,
		store:      st,
		snaps:      snaps,
		metrics:    newMetrics(opts.MetricsHook, logf),
		decrypt:    opts.Decrypt,
		logf:       logf,
		ctx:        ctx,
		cancel:     cancel,
		slots:      map[string]slot{},
		wake:       make(chan struct{}),
		pollerDone: make(chan struct{}),
	}
	return c, nil
}

// Instance is this node's name in the consumer audit.
func (c *Client) Instance() string { return c.instance }

// Labels returns a copy of this node's labels.
func (c *Client) Labels() map[string]string {
	out := make(map[string]string, len(c.labels))
	for k, v := range c.labels {
		out[k] = v
	}
	return out
}

// Metrics are the client's counters and gauges (see the Metric* names).
func (c *Client) Metrics() *Metrics { return c.metrics }

// Topics lists the subscribed topics, sorted.
func (c *Client) Topics() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.slots))
	for t := range c.slots {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

func (c *Client) String() string {
	return fmt.Sprintf("imprint.Client(%s, instance=%s, topics=%d)", c.bases[0], c.instance, len(c.Topics()))
}

// Subscribe keeps topic's value up to date, each version's bytes turned into a T by
// decode (an error or a panic keeps the old value and is reported to the server as a
// failure). It returns once the server's first answer is in, or after InitialWait (or
// when ctx ends), with the best value known: the server's, the cache's, the snapshot's,
// or def.
func Subscribe[T any](ctx context.Context, c *Client, topic string, def T, decode func(Payload) (T, error)) (*Subscription[T], error) {
	if decode == nil {
		return nil, errors.New("imprint: Subscribe needs a decoder")
	}
	return subscribe(ctx, c, topic, def, decode, kindMemory)
}

// SubscribeJSON decodes each version as JSON into a T.
func SubscribeJSON[T any](ctx context.Context, c *Client, topic string, def T) (*Subscription[T], error) {
	return subscribe(ctx, c, topic, def, func(p Payload) (T, error) {
		var v T
		if err := json.Unmarshal(p.Data, &v); err != nil {
			return v, err
		}
		return v, nil
	}, kindMemory)
}

// SubscribeBytes holds each version's raw bytes (def until one applies).
func (c *Client) SubscribeBytes(ctx context.Context, topic string, def []byte) (*Subscription[[]byte], error) {
	return subscribe(ctx, c, topic, def, func(p Payload) ([]byte, error) { return p.Data, nil }, kindMemory)
}

// SubscribeFile is for large payloads: each version is streamed to a file (verified,
// then renamed into the cache directory) and decode gets its Path (load a model, open a
// database...).
func SubscribeFile[T any](ctx context.Context, c *Client, topic string, def T, decode func(Payload) (T, error)) (*Subscription[T], error) {
	if decode == nil {
		return nil, errors.New("imprint: SubscribeFile needs a decoder")
	}
	return subscribe(ctx, c, topic, def, decode, kindFile)
}

// SubscribeFilePath is SubscribeFile whose value is the payload file's path ("" until a
// version applies).
func (c *Client) SubscribeFilePath(ctx context.Context, topic string) (*Subscription[string], error) {
	return SubscribeFile(ctx, c, topic, "", func(p Payload) (string, error) { return p.Path, nil })
}

func subscribe[T any](ctx context.Context, c *Client, topic string, def T, decode func(Payload) (T, error), k kind) (*Subscription[T], error) {
	if !ValidTopic(topic) {
		return nil, &InvalidTopicError{Topic: topic}
	}
	sub := newSubscription(topic, k, def, decode, c.logf)
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if _, dup := c.slots[topic]; dup {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrAlreadySubscribed, topic)
	}
	c.slots[topic] = sub
	c.mu.Unlock()

	c.startFromCache(sub)

	c.mu.Lock()
	sub.state.mu.Lock()
	sub.state.ready = true
	sub.state.mu.Unlock()
	c.generation++
	close(c.wake) // an open long poll is abandoned: the next one includes the topic
	c.wake = make(chan struct{})
	if !c.pollerUp && !c.stopped {
		c.pollerUp = true
		go c.run()
	}
	c.mu.Unlock()

	if c.s.initialWait > 0 {
		t := time.NewTimer(c.s.initialWait)
		defer t.Stop()
		select {
		case <-sub.settled:
		case <-t.C:
		case <-ctx.Done():
		case <-c.ctx.Done():
		}
	}
	return sub, nil
}

// startFromCache applies the cached payload of the topic, if any (a new version of the
// program may not read an old payload: then the default stays).
func (c *Client) startFromCache(sub slot) {
	m, path := c.store.load(sub.topicName(), c.logf)
	if m == nil {
		return
	}
	p := &Payload{
		Topic: m.Topic, Version: m.Version, SHA256: m.SHA256, ContentType: m.ContentType,
		Metadata: m.Metadata, Source: SourceCache,
	}
	if sub.kind() == kindFile {
		p.Path = path
	} else {
		data, err := readFileBounded(path, m.Size)
		if err != nil {
			c.logf(LevelWarn, fmt.Sprintf("imprint: cannot read the cached payload of %s: %v", m.Topic, err))
			return
		}
		p.Data = data
	}
	if err := sub.tryApply(p); err != nil {
		c.logf(LevelWarn, fmt.Sprintf("imprint: the cached %s v%d does not apply; ignoring it: %v", m.Topic, m.Version, err))
		return
	}
	c.metrics.gauge(MetricVersion, float64(m.Version), map[string]string{"topic": m.Topic})
	c.logf(LevelInfo, fmt.Sprintf("imprint: %s starts from the disk cache (v%d)", m.Topic, m.Version))
}

// liveSlots: the ready subscriptions, sorted by topic.
func (c *Client) liveSlots() []slot {
	c.mu.Lock()
	defer c.mu.Unlock()
	topics := make([]string, 0, len(c.slots))
	for t := range c.slots {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	out := make([]slot, 0, len(topics))
	for _, t := range topics {
		s := c.slots[t]
		st := s.st()
		st.mu.Lock()
		ready := st.ready
		st.mu.Unlock()
		if ready {
			out = append(out, s)
		}
	}
	return out
}

func (c *Client) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// Close stops polling (aborting a request or download in flight), sends the outcomes not
// reported yet in one short poll (at most 5 s), and keeps the disk cache. Values already
// handed out stay valid, but without a CacheDir the files of SubscribeFile are removed.
// Changes channels are closed. Close is idempotent.
func (c *Client) Close() error {
	return c.Shutdown(context.Background())
}

// Shutdown is Close bounded by ctx as well.
func (c *Client) Shutdown(ctx context.Context) error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.stopped = true
		up := c.pollerUp
		c.mu.Unlock()
		c.cancel()
		if up {
			// The poller returns at once unless a decoder is running; do not wait forever.
			t := time.NewTimer(c.s.requestTimeout + 5*time.Second)
			select {
			case <-c.pollerDone:
			case <-t.C:
				c.logf(LevelWarn, "imprint: the poller did not stop in time (a decoder still running?)")
			case <-ctx.Done():
			}
			t.Stop()
		}
		c.flushReports(ctx)
		c.mu.Lock()
		all := make([]slot, 0, len(c.slots))
		for _, s := range c.slots {
			all = append(all, s)
		}
		c.mu.Unlock()
		for _, s := range all {
			s.closeChanges()
		}
		c.store.discard()
	})
	return nil
}
