package planner

import (
	"context"
	"os"
	"time"

	"github.com/ccatobs/ccat-staging/shared/topology"
)

// fileStamp identifies a version of the topology file cheaply.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, false
	}
	return fileStamp{fi.ModTime(), fi.Size()}, true
}

// watchTopology reloads the topology when the file changes (polled) or when
// asked through Config.Reload. A file that fails to load keeps the previous
// topology in use: a typo must not take sites away.
func (s *service) watchTopology(ctx context.Context) {
	last, _ := stampOf(s.cfg.TopologyFile)
	var tick <-chan time.Time
	if s.cfg.TopologyPoll > 0 {
		t := time.NewTicker(s.cfg.TopologyPoll)
		defer t.Stop()
		tick = t.C
	}
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-s.cfg.Reload:
			force = true
		case <-tick:
		}
		st, ok := stampOf(s.cfg.TopologyFile)
		if !force && (!ok || st == last) {
			continue
		}
		if s.reloadTopology(ctx) {
			last = st
		}
	}
}

// reloadTopology loads the file, provisions consumers for any new site and
// swaps the topology in. It reports whether this version of the file is
// done with: a file that does not parse is not tried again until it
// changes, while failed provisioning is retried on the next poll.
func (s *service) reloadTopology(ctx context.Context) bool {
	t, err := topology.Load(s.cfg.TopologyFile)
	if err != nil {
		s.m.topology.WithLabelValues("failed").Inc()
		s.log.Error().Err(err).Msg("topology reload failed; keeping the previous one")
		return true
	}
	// Cleanup consumers first: once a new site's work consumers exist, only
	// the swap below is left before its submits are planned.
	err = s.provisionCleanupConsumers(ctx, t.SiteNames())
	if err == nil {
		err = s.provisionSites(ctx, t)
	}
	if err != nil {
		s.m.topology.WithLabelValues("failed").Inc()
		s.log.Error().Err(err).Msg("topology reload: provisioning failed; will retry")
		return false
	}
	s.topo.Store(t)
	s.m.topology.WithLabelValues("reloaded").Inc()
	s.m.sites.Set(float64(len(t.Sites)))
	s.log.Info().Strs("sites", t.SiteNames()).Msg("topology reloaded")
	return true
}
