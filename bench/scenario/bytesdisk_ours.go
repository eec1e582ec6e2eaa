package scenario

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/bench/fixture"
	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// diskStager stages one package per run through the whole pipeline.
type diskStager struct {
	sys      *system.System
	env      harness.Env
	outcomes chan event.Envelope
	sub      []*nats.Subscription
	location string
	staged   []string
	runID    string
}

// newDiskStager runs a pipeline whose processing location has the given
// sync setting, in a work directory of its own (dir, under env.WorkDir).
func newDiskStager(ctx context.Context, env harness.Env, dir, key string, info fixture.Info, sync string) (*diskStager, error) {
	return newStager(ctx, env, filepath.Join(env.WorkDir, dir), system.DiskLTA, key, info, nil, sync)
}

func newPipelineStager(ctx context.Context, env harness.Env, location, key string, info fixture.Info, s3 *system.S3) (*diskStager, error) {
	return newStager(ctx, env, env.WorkDir, location, key, info, s3, "")
}

func newStager(ctx context.Context, env harness.Env, work, location, key string, info fixture.Info, s3 *system.S3, sync string) (*diskStager, error) {
	sys, err := system.New(ctx, system.Options{WorkDir: work, Log: env.Log.Level(zerolog.WarnLevel), S3: s3,
		Env: map[string]string{"STAGER_WORKERS": "1"}, Sync: sync})
	if err != nil {
		return nil, err
	}
	d := &diskStager{sys: sys, env: env, outcomes: make(chan event.Envelope, 64), location: location,
		runID: fmt.Sprintf("%x", time.Now().UnixNano())}
	if err := d.start(ctx, env, key, info); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *diskStager) start(ctx context.Context, env harness.Env, key string, info fixture.Info) error {
	if err := d.sys.StartLedger(ctx); err != nil {
		return err
	}
	if err := d.sys.StartPlanner(); err != nil {
		return err
	}
	if err := d.sys.StartStager("bench-1"); err != nil {
		return err
	}
	for _, subj := range []string{subject.Done, subject.Failed} {
		s, err := d.sys.NC.Subscribe(subj, func(m *nats.Msg) {
			if ev, err := event.Decode(m.Data); err == nil {
				d.outcomes <- ev
			}
		})
		if err != nil {
			return err
		}
		d.sub = append(d.sub, s)
	}
	for i := range env.Repeat {
		a := event.PackageArchived{PackageID: d.pkg(i), Location: d.location, Key: key, SizeBytes: info.SizeBytes,
			Checksum: info.Checksum, Format: "tar", Files: info.Files}
		if err := publish(ctx, d.sys.JS, subject.Archived, "archived:"+d.location+":"+a.PackageID, a); err != nil {
			return err
		}
	}
	return waitIdle(ctx, d.sys.JS, subject.ArchiveStream, subject.PlannerCatalog, time.Minute, d.sys.Failed)
}

func (d *diskStager) pkg(i int) string { return fmt.Sprintf("pkg-%s-%d", d.runID, i) }

// Stage submits run i's job and waits for its staging.done, then syncs.
func (d *diskStager) Stage(ctx context.Context, i int) (time.Duration, error) {
	sub := event.Submit{JobID: fmt.Sprintf("bytes-%s-%d", d.runID, i), Packages: []string{d.pkg(i)},
		Destination: event.Destination{Site: system.Site}, RequestedBy: "bench"}
	start := time.Now()
	if err := publish(ctx, d.sys.JS, subject.Submit, "submit:"+sub.JobID, sub); err != nil {
		return 0, err
	}
	deadline := time.After(30 * time.Minute)
	for {
		select {
		case ev := <-d.outcomes:
			var o struct {
				event.Outcome
				Path      string `json:"path"`
				Reason    string `json:"reason"`
				Message   string `json:"message"`
				Permanent bool   `json:"permanent"`
			}
			if err := json.Unmarshal(ev.Data, &o); err != nil || o.JobID != sub.JobID {
				continue
			}
			if ev.Type == event.TypeFailed {
				if o.Permanent {
					return 0, fmt.Errorf("stager failed %s: %s: %s", o.PackageID, o.Reason, o.Message)
				}
				continue
			}
			d.staged = append(d.staged, o.Path)
			if err := syncAll(ctx); err != nil {
				return 0, err
			}
			return time.Since(start), nil
		case <-time.After(time.Second):
			if err := d.sys.Failed(); err != nil {
				return 0, err
			}
		case <-deadline:
			return 0, fmt.Errorf("no staging.done for %s within 30m", sub.JobID)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Clean empties what earlier runs staged, so the disk does not fill up
// (hollow).
func (d *diskStager) Clean() error {
	for _, p := range d.staged {
		if err := hollow(d.env, p); err != nil {
			return err
		}
	}
	d.staged = nil
	return nil
}

func (d *diskStager) Close() {
	for _, s := range d.sub {
		_ = s.Unsubscribe()
	}
	_ = d.Clean()
	_ = d.sys.Close()
}
