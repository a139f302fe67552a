package imprint

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The background goroutine: one batched (long) poll for every subscription of a client,
// each update handed to handleUpdate (fetched, verified, applied), its outcome reported
// on the next poll. Failures back off with jitter; while the server is unreachable,
// subscriptions with nothing to start from read their object-store snapshot.

// backoff is exponential, each delay drawn from [d/2, d], d doubling from min to max.
type backoff struct {
	min, max time.Duration
	failures int
	mu       sync.Mutex
	rnd      *rand.Rand
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, rnd: rand.New(rand.NewSource(time.Now().UnixNano()))}
}

func (b *backoff) next() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	shift := b.failures
	if shift > 20 {
		shift = 20
	}
	d := b.min << uint(shift)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.failures++
	half := d / 2
	return half + time.Duration(b.rnd.Int63n(int64(half)+1))
}

func (b *backoff) reset() {
	b.mu.Lock()
	b.failures = 0
	b.mu.Unlock()
}

type consumer struct {
	Instance string            `json:"instance"`
	Labels   map[string]string `json:"labels"`
}

type pollRequest struct {
	Consumer consumer           `json:"consumer"`
	Topics   map[string]*uint64 `json:"topics"`
	Applied  map[string]*report `json:"applied,omitempty"`
	WaitMs   int64              `json:"wait_ms"`
}

type pollResponse struct {
	Updates     map[string]*update `json:"updates"`
	Missing     map[string]string  `json:"missing"`
	PollAfterMs uint64             `json:"poll_after_ms"`
}

func (c *Client) request(asked []slot, wait time.Duration) *pollRequest {
	req := &pollRequest{
		Consumer: consumer{Instance: c.instance, Labels: c.labels},
		Topics:   make(map[string]*uint64, len(asked)),
		Applied:  map[string]*report{},
		WaitMs:   wait.Milliseconds(),
	}
	for _, s := range asked {
		if v, has, _, _ := s.held(); has {
			v := v
			req.Topics[s.topicName()] = &v
		} else {
			req.Topics[s.topicName()] = nil
		}
		st := s.st()
		st.mu.Lock()
		if st.report != nil {
			req.Applied[s.topicName()] = st.report
		}
		st.mu.Unlock()
	}
	return req
}

// forgetSent: the reports went through; forget them unless a newer one replaced them.
func forgetSent(asked []slot, req *pollRequest) {
	for _, s := range asked {
		st := s.st()
		st.mu.Lock()
		if sent, ok := req.Applied[s.topicName()]; ok && st.report == sent {
			st.report = nil
		}
		st.mu.Unlock()
	}
}

// sendPoll makes one poll, bounded by the hold plus RequestTimeout.
func (c *Client) sendPoll(ctx context.Context, req *pollRequest, wait time.Duration) (*pollResponse, error) {
	bound := wait + c.s.requestTimeout
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	resp, err := c.send(ctx, http.MethodPost, c.url("/api/v1/poll"), req, nil)
	if err != nil {
		return nil, err
	}
	var out pollResponse
	if err := readJSON(resp, maxPollBody, "poll answer", &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// pause sleeps d, or less when the client closes or a topic is subscribed (wake).
func (c *Client) pause(d time.Duration, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
	case <-c.ctx.Done():
	}
}

func (c *Client) run() {
	defer close(c.pollerDone)
	bo := newBackoff(c.s.minBackoff, c.s.maxBackoff)
	var nextRecheck time.Time
	for c.ctx.Err() == nil {
		c.mu.Lock()
		wake := c.wake
		c.mu.Unlock()
		slots := c.liveSlots()
		if len(slots) == 0 {
			c.pause(time.Hour, wake)
			continue
		}
		// Which topics to ask about: all of them, except those stuck on a rejected version
		// (the server would answer at once with it) until their recheck is due.
		now := time.Now()
		anyStuck := false
		for _, s := range slots {
			if stuckOf(s) {
				anyStuck = true
			}
		}
		recheckDue := anyStuck && (nextRecheck.IsZero() || !nextRecheck.After(now))
		var asked []slot
		for _, s := range slots {
			st := s.st()
			st.mu.Lock()
			if !st.stuck || recheckDue || st.report != nil {
				asked = append(asked, s)
			}
			st.mu.Unlock()
		}
		if len(asked) == 0 {
			until := c.s.recheckRejected
			if !nextRecheck.IsZero() {
				until = nextRecheck.Sub(now)
			}
			c.pause(until, wake)
			continue
		}
		// A short poll when something needs an answer now (a new subscription, a stuck
		// topic: answered at once anyway); else a long one, held at most until the next
		// recheck.
		short := false
		for _, s := range asked {
			if !s.isSettled() || stuckOf(s) {
				short = true
			}
		}
		wait := c.s.longPoll
		if short {
			wait = 0
		}
		if !short && anyStuck && !nextRecheck.IsZero() {
			if until := nextRecheck.Sub(now); until < wait {
				wait = until
			}
			if wait < 0 {
				wait = 0
			}
		}
		if recheckDue {
			nextRecheck = now.Add(c.s.recheckRejected)
		}
		req := c.request(asked, wait)

		// A new subscription abandons the open poll: the next one asks about it too.
		pollCtx, cancel := context.WithCancel(c.ctx)
		var abandoned atomic.Bool
		done := make(chan struct{})
		go func() {
			select {
			case <-wake:
				abandoned.Store(true)
				cancel()
			case <-done:
			}
		}()
		resp, err := c.sendPoll(pollCtx, req, wait)
		close(done)
		cancel()
		if c.ctx.Err() != nil {
			break
		}
		if err != nil && abandoned.Load() {
			continue
		}
		var delay time.Duration
		if err == nil {
			delay = c.answered(asked, req, resp, short, bo)
			for _, s := range asked {
				if stuckOf(s) {
					nextRecheck = time.Now().Add(c.s.recheckRejected)
					break
				}
			}
			if c.ctx.Err() != nil {
				break
			}
		} else {
			delay = c.failed(asked, err, bo)
		}
		if delay > 0 {
			c.pause(delay, wake)
		}
	}
	c.logf(LevelDebug, "imprint: poller stopped")
}

func stuckOf(s slot) bool {
	st := s.st()
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.stuck
}

func (c *Client) answered(asked []slot, req *pollRequest, resp *pollResponse, short bool, bo *backoff) time.Duration {
	c.metrics.gauge(MetricLastPollSuccess, float64(time.Now().Unix()), nil)
	bo.reset()
	forgetSent(asked, req)
	transient := false
	for _, s := range asked {
		topic := s.topicName()
		if u, ok := resp.Updates[topic]; ok && u != nil {
			if err := c.handleUpdate(c.ctx, s, u); err != nil {
				if c.ctx.Err() != nil {
					return 0
				}
				c.logf(LevelWarn, fmt.Sprintf("imprint: cannot fetch %s v%d; will retry: %v", topic, u.Version, err))
				c.metrics.count(MetricPollErrors, map[string]string{"kind": "download"})
				transient = true
			}
		} else if reason, ok := resp.Missing[topic]; ok {
			st := s.st()
			st.mu.Lock()
			st.stuck = false // nothing is offered any more, not even the rejected version
			st.mu.Unlock()
			level := LevelWarn
			if reason == "no_version_in_scope" || s.isSettled() {
				level = LevelDebug
			}
			c.logf(level, fmt.Sprintf("imprint: the server has nothing for %s: %s", topic, reason))
		} else {
			s.confirm() // up to date: what we hold is what we should hold
			st := s.st()
			st.mu.Lock()
			st.stuck = false
			st.mu.Unlock()
		}
		s.settle()
	}
	// The server's pause is for short pollers; a poll made short here (a new or stuck
	// topic) is followed by a long one at once.
	var hint time.Duration
	if !short || c.s.longPoll == 0 {
		hint = time.Duration(resp.PollAfterMs) * time.Millisecond
		if hint > maxPollAfter || hint < 0 {
			hint = maxPollAfter
		}
	}
	if transient {
		if d := bo.next(); d > hint {
			return d
		}
	}
	return hint
}

func (c *Client) failed(asked []slot, err error, bo *backoff) time.Duration {
	transient := isTransient(err)
	if transient && c.snaps != nil {
		// The server is unreachable: subscriptions with nothing to start from (no cache)
		// read their object-store snapshot, once.
		for _, s := range asked {
			st := s.st()
			st.mu.Lock()
			first := !st.snapshotTried
			st.snapshotTried = true
			st.mu.Unlock()
			if _, _, src, _ := s.held(); first && src == SourceDefault {
				c.startFromSnapshot(c.ctx, s)
			}
		}
	}
	for _, s := range asked {
		s.settle()
	}
	kind := "network"
	var api *APIError
	var retryAfter time.Duration
	if errors.As(err, &api) {
		kind = "client"
		if api.Status >= 500 {
			kind = "server"
		}
		retryAfter = api.RetryAfter
		if retryAfter > maxRetryAfter {
			retryAfter = maxRetryAfter
		}
	}
	c.metrics.count(MetricPollErrors, map[string]string{"kind": kind})
	if transient {
		c.failOver()
		d := bo.next()
		if retryAfter > d {
			d = retryAfter // the server's Retry-After (429, 503) is a floor, bounded
		}
		c.logf(LevelWarn, fmt.Sprintf("imprint: poll failed, retrying in %v: %v", d.Round(time.Millisecond), err))
		return d
	}
	d := c.s.clientErrorRetry
	if retryAfter > d {
		d = retryAfter
	}
	c.logf(LevelError, fmt.Sprintf("imprint: poll refused, retrying in %v: %v", d.Round(time.Millisecond), err))
	return d
}

// flushReports sends the outcomes not reported yet (at Close), in one short poll of at
// most 5 s.
func (c *Client) flushReports(ctx context.Context) {
	var pending []slot
	for _, s := range c.liveSlots() {
		st := s.st()
		st.mu.Lock()
		if st.report != nil {
			pending = append(pending, s)
		}
		st.mu.Unlock()
	}
	if len(pending) == 0 {
		return
	}
	req := c.request(pending, 0)
	bound := c.s.requestTimeout
	if bound > 5*time.Second {
		bound = 5 * time.Second
	}
	fctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	rctx, rcancel := context.WithTimeout(fctx, bound)
	defer rcancel()
	resp, err := c.send(rctx, http.MethodPost, c.url("/api/v1/poll"), req, nil)
	if err == nil {
		var out pollResponse
		err = readJSON(resp, maxPollBody, "poll answer", &out)
	}
	if err != nil {
		c.logf(LevelDebug, fmt.Sprintf("imprint: could not send the last apply reports: %v", err))
		return
	}
	forgetSent(pending, req)
}
