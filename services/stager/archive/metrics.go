package archive

import "github.com/prometheus/client_golang/prometheus"

// Collectors exports the location's parallel-read counters, labelled with
// the location's name, for the stager's registry. They read the counters
// the reads keep anyway, so a backend nobody registers costs nothing.
func (s *S3) Collectors(location string) []prometheus.Collector {
	l := prometheus.Labels{"location": location}
	counter := func(name, help string, v func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: l},
			func() float64 { return float64(v()) })
	}
	return []prometheus.Collector{
		counter("stager_s3_part_gets_total", "Ranged GETs sent for parts of archive objects.", s.stats.gets.Load),
		counter("stager_s3_part_bytes_total", "Bytes received in complete parts of archive objects.", s.stats.bytes.Load),
		counter("stager_s3_part_retries_total", "Part GETs repeated after a failure (a reset, a 5xx, a short body).", s.stats.retries.Load),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stager_s3_part_workers", ConstLabels: l,
			Help: "Goroutines fetching parts right now (at most parts per package being read)."},
			func() float64 { return float64(s.stats.workers.Load()) }),
	}
}
