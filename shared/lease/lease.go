// Package lease is the STAGER_LEASES bucket: one owner at a time of a
// staged copy, across every stager instance of a site.
//
// Staging a package, answering already_present for it and deleting it must
// not interleave at one (location, package): a deletion that claimed the
// copy and is about to remove it must not let another instance report the
// copy as present. A per-process mutex orders this only inside one process,
// so the owner is recorded in a JetStream KV bucket instead:
//
//   - key   <site>.<location>.<package key> (the package key is the package
//     id, or "=" + base64url(id) for ids a KV key cannot hold, as for
//     PLANNER_REFS);
//   - value a JSON Holder (instance, purpose, job or deletion, since when);
//   - taken by compare-and-set (expected last sequence of the key: 0, or the
//     revision of the marker a release or an expiry left), so two instances
//     never both succeed;
//   - every write carries a per-message TTL (nats-server 2.11+, enabled by
//     the bucket's LimitMarkerTTL): a holder that dies stops renewing and
//     its lease vanishes after TTL, leaving a "MaxAge" marker; the next
//     taker counts that as a takeover;
//   - renewed by compare-and-set at TTL/3 while held, so a lease that
//     somebody else took over is noticed as lost, never silently shared;
//   - released by a purge at the holder's revision, whose marker expires
//     after MarkerTTL, so the bucket holds only leases in use.
//
// A lease is only as good as its holder's clock: a holder frozen for longer
// than TTL may act after another took over. Holders therefore Confirm (renew
// synchronously) right before an irreversible step.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the KV bucket of the leases; its stream is KV_STAGER_LEASES.
const Bucket = "STAGER_LEASES"

const (
	// DefaultTTL is how long a lease outlives its last renewal.
	DefaultTTL = 30 * time.Second
	// MarkerTTL is how long the marker of a released or expired lease
	// stays (it is what tells a taker that the previous holder expired).
	MarkerTTL = time.Minute
	// MinTTL is the shortest per-message TTL JetStream accepts.
	MinTTL = time.Second
)

// Purposes of a lease.
const (
	PurposeStage  = "stage"
	PurposeDelete = "delete"
)

// ErrLost says the lease is no longer this holder's: it expired, or another
// holder took it over.
var ErrLost = errors.New("lease lost")

// Holder is the value of a held lease.
type Holder struct {
	Instance string `json:"instance"`
	// Run tells this process's leases from those an earlier run of the
	// same instance left behind when it died.
	Run     string `json:"run"`
	Purpose string `json:"purpose"`
	// JobID and RequestID name the staging request holding it; RefsRevision
	// the deletion (decided at that PLANNER_REFS revision).
	JobID        string    `json:"job_id,omitempty"`
	RequestID    string    `json:"request_id,omitempty"`
	RefsRevision uint64    `json:"refs_revision,omitempty"`
	Since        time.Time `json:"since"`
	RenewedAt    time.Time `json:"renewed_at"`
	TTLSeconds   float64   `json:"ttl_seconds"`
}

// Current is a lease held by somebody, as read from the bucket.
type Current struct {
	Holder
	Revision uint64
}

// Options configure a Store.
type Options struct {
	// Instance names the holder (unique per site, as for the stager's temp
	// dirs): a lease held by the same instance in an earlier run is a dead
	// predecessor's and is taken over at once instead of after its TTL.
	Instance string
	Replicas int
	// TTL of this store's leases (DefaultTTL when zero, at least MinTTL).
	TTL time.Duration
	// MarkerTTL overrides the bucket's marker TTL (tests only; every
	// instance must open the bucket with the same value).
	MarkerTTL time.Duration
}

// Store takes leases in the bucket. Safe for concurrent use.
type Store struct {
	instance string
	run      string
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	stream   jetstream.Stream
	ttl      time.Duration
	marker   time.Duration
}

// Open creates the bucket when it is missing (or differs) and returns a
// Store whose leases last opts.TTL past their last renewal.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	ttl := opts.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	ttl = max(ttl, MinTTL)
	marker := opts.MarkerTTL
	if marker <= 0 {
		marker = MarkerTTL
	}
	replicas := max(opts.Replicas, 1)
	// Look before changing anything (as heartbeat.Bucket does): under the
	// least-privilege permissions of deploy/nats a stager may not update a
	// bucket, and a refused update only times out.
	var kv jetstream.KeyValue
	if b, err := js.KeyValue(ctx, Bucket); err == nil {
		if st, err := b.Status(ctx); err == nil {
			c := st.Config()
			if c.History == 1 && c.LimitMarkerTTL == marker && c.Replicas == replicas && c.Storage == jetstream.FileStorage {
				kv = b
			}
		}
	}
	if kv == nil {
		var err error
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:         Bucket,
			Description:    "<site>.<location>.<package> -> the stager instance staging or deleting that copy (per-key TTL)",
			History:        1,
			Storage:        jetstream.FileStorage,
			Replicas:       replicas,
			LimitMarkerTTL: marker,
		})
		if err != nil {
			return nil, fmt.Errorf("kv bucket %s: %w", Bucket, err)
		}
	}
	stream, err := js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", Bucket, err)
	}
	var run [8]byte
	_, _ = rand.Read(run[:])
	return &Store{instance: opts.Instance, run: hex.EncodeToString(run[:]), js: js, kv: kv, stream: stream, ttl: ttl, marker: marker}, nil
}

// TTL is how long this store's leases outlive their last renewal.
func (s *Store) TTL() time.Duration { return s.ttl }

// Key is the lease key of a package's copy at a location.
func Key(site, location, packageID string) string {
	return site + "." + location + "." + packageKey(packageID)
}

// packageKey is the planner's kvkey rule: ids a KV key cannot hold (ending
// in '.', containing "..") become "=" + base64url(id); no id starts with
// '=', so the forms never collide.
func packageKey(id string) string {
	if id != "" && !strings.HasSuffix(id, ".") && !strings.Contains(id, "..") {
		return id
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

func subjectOf(key string) string { return "$KV." + Bucket + "." + key }

// Lease is a held lease. It renews itself until Release or until it is lost.
type Lease struct {
	st   *Store
	key  string
	subj string
	// TookOver says the previous holder's lease expired rather than being
	// released: that holder died or lost touch.
	TookOver bool

	mu      sync.Mutex
	holder  Holder
	rev     uint64
	renewed time.Time // when the last renewal was acknowledged
	lost    chan struct{}
	lostErr error

	stop context.CancelFunc
	done chan struct{}
}

// TryAcquire takes key for h when nobody holds it. When somebody does, it
// returns a nil Lease and the current holder.
func (s *Store) TryAcquire(ctx context.Context, key string, h Holder) (*Lease, *Current, error) {
	subj := subjectOf(key)
	// Most copies are new: a compare-and-set on "the key has no message"
	// takes a never-held key (or one whose marker has expired) in one
	// round trip. Anything else there (a holder, a marker) fails it, and
	// the key is read as below.
	first := s.stamp(h)
	if rev, err := s.put(ctx, subj, first, 0); err == nil {
		return s.held(ctx, key, subj, first, rev, false), nil, nil
	} else if !errors.Is(err, ErrLost) {
		return nil, nil, fmt.Errorf("lease %s: %w", key, err)
	}
	var expect uint64
	takeover := false
	// The read may come from a replica that lags (KV buckets allow direct
	// get); it only chooses what to expect. The compare-and-set publish,
	// decided by the stream's leader, is what makes two takers impossible.
	m, err := s.stream.GetLastMsgForSubject(ctx, subj)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		// Never held, or the last marker has expired too.
	case err != nil:
		return nil, nil, fmt.Errorf("lease %s: %w", key, err)
	case isMarker(m.Header):
		expect = m.Sequence
		takeover = m.Header.Get(jetstream.MarkerReasonHeader) == "MaxAge"
	default:
		cur := &Current{Revision: m.Sequence}
		if err := json.Unmarshal(m.Data, &cur.Holder); err != nil {
			return nil, nil, fmt.Errorf("lease %s: %w", key, err)
		}
		if s.instance == "" || cur.Instance != s.instance || cur.Run == s.run {
			return nil, cur, nil
		}
		// This instance's, from a run that died holding it (a restart
		// after kill -9): nobody else can be using it.
		expect, takeover = m.Sequence, true
	}
	h = s.stamp(h)
	rev, err := s.put(ctx, subj, h, expect)
	if errors.Is(err, ErrLost) {
		// Somebody else took it between our read and our write.
		cur, rerr := s.current(ctx, key)
		if rerr != nil {
			return nil, nil, rerr
		}
		return nil, cur, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("lease %s: %w", key, err)
	}
	return s.held(ctx, key, subj, h, rev, takeover), nil, nil
}

// stamp fills in what this store writes into every lease it takes.
func (s *Store) stamp(h Holder) Holder {
	if s.instance != "" {
		h.Instance = s.instance
	}
	h.Run = s.run
	now := time.Now().UTC()
	h.Since, h.RenewedAt, h.TTLSeconds = now, now, s.ttl.Seconds()
	return h
}

// held returns the lease just written at rev and starts its renewals.
func (s *Store) held(ctx context.Context, key, subj string, h Holder, rev uint64, takeover bool) *Lease {
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	l := &Lease{st: s, key: key, subj: subj, TookOver: takeover, holder: h, rev: rev, renewed: time.Now(),
		lost: make(chan struct{}), stop: stop, done: make(chan struct{})}
	go l.keep(lctx)
	return l
}

// current reads the live holder of key; a zero Current when there is none.
func (s *Store) current(ctx context.Context, key string) (*Current, error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, subjectOf(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return &Current{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	if isMarker(m.Header) {
		return &Current{}, nil
	}
	cur := &Current{Revision: m.Sequence}
	if err := json.Unmarshal(m.Data, &cur.Holder); err != nil {
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	return cur, nil
}

// Acquire takes key for h, waiting while somebody else holds it (polling,
// from 50 ms up to a second apart) until ctx ends. onWait, when not nil, is
// called each time a new holder is found in the way (the caller logs it and
// keeps its message alive meanwhile).
func (s *Store) Acquire(ctx context.Context, key string, h Holder, onWait func(Current)) (*Lease, error) {
	delay := 50 * time.Millisecond
	var seen Holder
	for {
		l, cur, err := s.TryAcquire(ctx, key, h)
		if err != nil {
			return nil, err
		}
		if l != nil {
			return l, nil
		}
		if onWait != nil && cur.Instance != "" && (cur.Instance != seen.Instance || !cur.Since.Equal(seen.Since)) {
			onWait(*cur)
		}
		seen = cur.Holder
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, time.Second)
	}
}

// put publishes h at subj if the subject's last sequence is expect, with the
// store's TTL; ErrLost when it is not.
func (s *Store) put(ctx context.Context, subj string, h Holder, expect uint64) (uint64, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return 0, err
	}
	m := nats.NewMsg(subj)
	m.Data = b
	ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(expect), jetstream.WithMsgTTL(s.ttl))
	if isConflict(err) {
		return 0, ErrLost
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// Holder returns the lease's value.
func (l *Lease) Holder() Holder {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.holder
}

// Lost is closed when the lease is lost.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// keep renews the lease every TTL/3 until it is released or lost. A renewal
// that fails for another reason than a conflict (the server is out of
// reach) is retried; once TTL has passed since the last good one the lease
// is given up, because another holder may have it by then.
func (l *Lease) keep(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(l.st.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := l.renew(ctx)
		if err == nil || ctx.Err() != nil {
			continue
		}
		l.mu.Lock()
		stale := time.Since(l.renewed) >= l.st.ttl
		l.mu.Unlock()
		if errors.Is(err, ErrLost) || stale {
			l.markLost(fmt.Errorf("%w: %w", ErrLost, err))
			return
		}
	}
}

func (l *Lease) renew(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostErr != nil {
		return l.lostErr
	}
	rctx, cancel := context.WithTimeout(ctx, l.st.ttl/3)
	defer cancel()
	h := l.holder
	h.RenewedAt = time.Now().UTC()
	rev, err := l.st.put(rctx, l.subj, h, l.rev)
	if err != nil {
		return err
	}
	l.holder, l.rev, l.renewed = h, rev, time.Now()
	return nil
}

func (l *Lease) markLost(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostErr == nil {
		l.lostErr = err
		close(l.lost)
	}
}

// Confirm renews the lease now and returns nil only if it is still this
// holder's: call it right before an irreversible step.
func (l *Lease) Confirm(ctx context.Context) error {
	err := l.renew(ctx)
	if errors.Is(err, ErrLost) {
		l.markLost(err)
	}
	if err != nil {
		return fmt.Errorf("lease %s: %w", l.key, err)
	}
	return nil
}

// Release stops the renewals and frees the lease (a purge at the holder's
// revision, so a lease somebody else took over is left alone). It runs even
// when ctx is cancelled, within a few seconds.
func (l *Lease) Release(ctx context.Context) error {
	l.stop()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostErr != nil {
		return nil
	}
	l.lostErr = errors.New("lease released")
	close(l.lost)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := l.st.kv.Purge(rctx, l.key, jetstream.LastRevision(l.rev), jetstream.PurgeTTL(l.st.marker))
	if err != nil && !isConflict(err) {
		// It expires after TTL anyway.
		return fmt.Errorf("lease %s: release: %w", l.key, err)
	}
	return nil
}

// isMarker says whether a stored message is a release or an expiry marker.
func isMarker(h nats.Header) bool {
	return h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != ""
}

func isConflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Held reads key's lease once, from the stream's leader, and returns its
// holder, or nil when nobody holds it (never taken, released, or expired).
//
// Unlike TryAcquire's read, which only chooses what to expect of a
// compare-and-set, a caller may act on this answer (the stager's
// already_present answer does: see services/stager/stager/lease.go), so it
// must not come from a replica that lags: it is a plain JetStream message
// get, which the stream's leader answers, never a direct get (KV buckets
// allow direct gets, and the jetstream client uses them when allowed). A
// lease whose put was acknowledged is stored on the leader before the
// acknowledgement goes out, so a read that starts after it sees it.
func (s *Store) Held(ctx context.Context, key string) (*Current, error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{subjectOf(key)})
	if err != nil {
		return nil, err
	}
	rctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	reply, err := s.js.Conn().RequestWithContext(rctx, s.apiPrefix()+"STREAM.MSG.GET.KV_"+Bucket, req)
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	var resp struct {
		Error *jetstream.APIError `json:"error,omitempty"`
		Msg   *struct {
			Sequence uint64 `json:"seq"`
			Header   []byte `json:"hdrs,omitempty"`
			Data     []byte `json:"data,omitempty"`
		} `json:"message,omitempty"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, nil
	case resp.Error != nil:
		return nil, fmt.Errorf("lease %s: %w", key, resp.Error)
	case resp.Msg == nil:
		return nil, fmt.Errorf("lease %s: empty message get response", key)
	}
	// Release and expiry markers carry no value (only headers saying
	// which they are); a holder's value is never empty.
	if len(resp.Msg.Data) == 0 || rawIsMarker(resp.Msg.Header) {
		return nil, nil
	}
	cur := &Current{Revision: resp.Msg.Sequence}
	if err := json.Unmarshal(resp.Msg.Data, &cur.Holder); err != nil {
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	return cur, nil
}

// apiPrefix is the JetStream API prefix the store's client uses.
func (s *Store) apiPrefix() string {
	o := s.js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	default:
		return jetstream.DefaultAPIPrefix
	}
}

// rawIsMarker is isMarker on the raw header block of a message get.
func rawIsMarker(hdr []byte) bool {
	h := string(hdr)
	return strings.Contains(h, "KV-Operation:") || strings.Contains(h, jetstream.MarkerReasonHeader+":")
}
