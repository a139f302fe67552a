package imprint

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Source says where a subscription's current value came from.
type Source string

const (
	// SourceDefault: the default given to Subscribe; no version was ever applied.
	SourceDefault Source = "default"
	// SourceCache: the disk cache (an earlier run's last good version); becomes
	// SourceServer once a poll confirms it.
	SourceCache Source = "cache"
	// SourceSnapshot: the server's object-store snapshot, read because the server was
	// unreachable and nothing was cached; becomes SourceServer once a poll confirms it.
	SourceSnapshot Source = "snapshot"
	// SourceServer: delivered (or confirmed) by the server.
	SourceServer Source = "server"
)

// Payload is one verified version as a decoder sees it: the bytes in memory (Data) for
// Subscribe, SubscribeJSON and SubscribeBytes, or a file on disk (Path) for SubscribeFile.
type Payload struct {
	Topic       string
	Version     uint64
	SHA256      string // hex, already verified
	ContentType string
	Metadata    map[string]string
	Pinned      bool   // the version reaches this node through a pin
	Source      Source // SourceServer, SourceCache or SourceSnapshot
	Data        []byte
	// Path of the payload file (SubscribeFile). It stays in place until two newer
	// versions have applied.
	Path string
	// Region is the region whose copy was downloaded (a server with several regions,
	// docs/regions.md); "" for inline payloads, one region, the cache and the snapshot.
	Region string
}

// Current is a subscription's value and what is known about it, read together.
type Current[T any] struct {
	Value   T
	Version uint64 // 0 while serving the default (HasVersion false)
	// HasVersion is false while the default is served.
	HasVersion bool
	Source     Source
	SHA256     string
	Pinned     bool
	// ServedRegion is the region whose copy of the held version was downloaded
	// (Payload.Region); "" when none was.
	ServedRegion string
}

type kind int

const (
	kindMemory kind = iota
	kindFile
)

// report is one applied/failed outcome not sent yet.
type report struct {
	Version uint64 `json:"version"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	// Region is the region whose copy was downloaded (docs/regions.md).
	Region string `json:"region,omitempty"`
}

type versionKey struct {
	version uint64
	pinned  bool
}

// slotState is what the poller remembers per topic between polls (under mu).
type slotState struct {
	mu            sync.Mutex
	report        *report
	rejected      *versionKey // did not apply: not tried again until something else is offered
	stuck         bool        // only the rejected version is on offer
	ready         bool        // the cache was read; the poller may ask about it
	snapshotTried bool
}

// slot is the poller's view of a subscription, whatever its value type.
type slot interface {
	topicName() string
	kind() kind
	held() (version uint64, has bool, source Source, sha string)
	tryApply(p *Payload) error
	confirm()
	st() *slotState
	settle()
	isSettled() bool
	closeChanges()
}

// Subscription is one topic kept up to date by its Client. Get never blocks and always
// returns a valid value: the default until a version applies.
type Subscription[T any] struct {
	topic   string
	k       kind
	decode  func(Payload) (T, error)
	cur     atomic.Pointer[Current[T]]
	state   slotState
	settled chan struct{}
	once    sync.Once

	mu        sync.Mutex
	nextID    int
	listeners map[int]func(T)
	order     []int
	chans     []chan T
	changed   chan struct{} // closed (and replaced) at every swap
	closed    bool
	log       func(Level, string)
}

func newSubscription[T any](topic string, k kind, def T, decode func(Payload) (T, error), log func(Level, string)) *Subscription[T] {
	s := &Subscription[T]{
		topic:     topic,
		k:         k,
		decode:    decode,
		settled:   make(chan struct{}),
		listeners: map[int]func(T){},
		changed:   make(chan struct{}),
		log:       log,
	}
	s.cur.Store(&Current[T]{Value: def, Source: SourceDefault})
	return s
}

// Topic is the subscribed topic's name.
func (s *Subscription[T]) Topic() string { return s.topic }

// Get returns the current value (or the default): one atomic load, never blocking.
func (s *Subscription[T]) Get() T { return s.cur.Load().Value }

// Current returns the value with its version, source, checksum and pinned flag, as one.
func (s *Subscription[T]) Current() Current[T] { return *s.cur.Load() }

// Version returns the version held (whatever its source); ok is false while the default
// is served.
func (s *Subscription[T]) Version() (version uint64, ok bool) {
	c := s.cur.Load()
	return c.Version, c.HasVersion
}

// Source says where the current value came from.
func (s *Subscription[T]) Source() Source { return s.cur.Load().Source }

// ServedRegion is the region whose copy of the held version was downloaded (several
// regions, docs/regions.md); "" while none was.
func (s *Subscription[T]) ServedRegion() string { return s.cur.Load().ServedRegion }

// OnChange calls fn with each value swapped in from now on, on the client's poller
// goroutine (keep it short; a panic is logged and ignored). It returns a function that
// removes the listener.
func (s *Subscription[T]) OnChange(fn func(T)) (remove func()) {
	s.mu.Lock()
	id := s.nextID
	s.nextID++
	s.listeners[id] = fn
	s.order = append(s.order, id)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.listeners, id)
		s.mu.Unlock()
	}
}

// Changes returns a channel of the values swapped in from now on (the current one is not
// repeated). A slow reader skips to the newest value: the channel holds one. It is closed
// when the client is closed.
func (s *Subscription[T]) Changes() <-chan T {
	ch := make(chan T, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		close(ch)
		return ch
	}
	s.chans = append(s.chans, ch)
	return ch
}

// Next waits for the next value swapped in after the call (or ctx's end).
func (s *Subscription[T]) Next(ctx context.Context) (T, error) {
	s.mu.Lock()
	ch, closed := s.changed, s.closed
	s.mu.Unlock()
	if closed {
		var zero T
		return zero, ErrClosed
	}
	select {
	case <-ch:
		s.mu.Lock()
		closed = s.closed && s.changed == ch
		s.mu.Unlock()
		if closed {
			var zero T
			return zero, ErrClosed
		}
		return s.Get(), nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (s *Subscription[T]) String() string {
	c := s.cur.Load()
	if !c.HasVersion {
		return fmt.Sprintf("Subscription(%s, default)", s.topic)
	}
	return fmt.Sprintf("Subscription(%s, v%d from %s)", s.topic, c.Version, c.Source)
}

// ---------------------------------------------------------------- the poller's side --

func (s *Subscription[T]) topicName() string { return s.topic }
func (s *Subscription[T]) kind() kind        { return s.k }
func (s *Subscription[T]) st() *slotState    { return &s.state }

func (s *Subscription[T]) held() (uint64, bool, Source, string) {
	c := s.cur.Load()
	return c.Version, c.HasVersion, c.Source, c.SHA256
}

// tryApply runs the decoder (a panic is a failure) and, on success, swaps the value in
// and tells the listeners and channels.
func (s *Subscription[T]) tryApply(p *Payload) (err error) {
	var value T
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = reject("apply panicked: %v", r)
			}
		}()
		v, derr := s.decode(*p)
		if derr != nil {
			err = reject("decode failed: %v", derr)
			return
		}
		value = v
	}()
	if err != nil {
		return err
	}
	s.cur.Store(&Current[T]{Value: value, Version: p.Version, HasVersion: true, Source: p.Source, SHA256: p.SHA256, Pinned: p.Pinned, ServedRegion: p.Region})
	s.notify(value)
	return nil
}

func (s *Subscription[T]) notify(value T) {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	fns := make([]func(T), 0, len(s.listeners))
	kept := s.order[:0]
	for _, id := range s.order {
		if fn, ok := s.listeners[id]; ok {
			fns = append(fns, fn)
			kept = append(kept, id)
		}
	}
	s.order = kept
	for _, ch := range s.chans {
		select {
		case ch <- value:
		default:
			select { // full: the reader is slow, replace the value waiting with the newest
			case <-ch:
			default:
			}
			select {
			case ch <- value:
			default:
			}
		}
	}
	s.mu.Unlock()
	for _, fn := range fns {
		s.callListener(fn, value)
	}
}

func (s *Subscription[T]) callListener(fn func(T), value T) {
	defer func() {
		if r := recover(); r != nil {
			s.log(LevelError, fmt.Sprintf("imprint: a listener of %s panicked: %v", s.topic, r))
		}
	}()
	fn(value)
}

// confirm: a poll says the version held is still the right one: its source is the server.
func (s *Subscription[T]) confirm() {
	c := s.cur.Load()
	if c.HasVersion && c.Source != SourceServer {
		n := *c
		n.Source = SourceServer
		s.cur.CompareAndSwap(c, &n)
	}
}

func (s *Subscription[T]) settle() { s.once.Do(func() { close(s.settled) }) }

func (s *Subscription[T]) isSettled() bool {
	select {
	case <-s.settled:
		return true
	default:
		return false
	}
}

func (s *Subscription[T]) closeChanges() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, ch := range s.chans {
		close(ch)
	}
	s.chans = nil
	close(s.changed)
}
