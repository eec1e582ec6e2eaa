package scenario

import (
	"context"
	"fmt"

	"github.com/uptrace/bun"
)

// snapshotQueries read every projection table in a fixed order. Columns that
// depend on when or in which order rows were written (serials, wall-clock
// times, stream sequence numbers) are left out.
var snapshotQueries = map[string]string{
	"sites":          "SELECT to_jsonb(x) FROM sites x ORDER BY name",
	"locations":      "SELECT to_jsonb(x) FROM locations x ORDER BY name",
	"event_log":      "SELECT to_jsonb(x) - 'seq' - 'applied_at' - 'stream_seq' FROM event_log x ORDER BY source, id",
	"poison":         "SELECT to_jsonb(x) - 'id' - 'received_at' FROM poison x ORDER BY stream, stream_seq",
	"packages":       "SELECT to_jsonb(x) FROM packages x ORDER BY package_id",
	"archive_copies": "SELECT to_jsonb(x) FROM archive_copies x ORDER BY package_id, location",
	"jobs":           "SELECT to_jsonb(x) FROM jobs x ORDER BY job_id",
	"job_packages":   "SELECT to_jsonb(x) FROM job_packages x ORDER BY job_id, package_id",
	"attempts":       "SELECT to_jsonb(x) FROM attempts x ORDER BY job_id, package_id, attempt",
	"staged_copies":  "SELECT to_jsonb(x) FROM staged_copies x ORDER BY package_id, location",
	"failures":       "SELECT to_jsonb(x) FROM package_failures x ORDER BY job_id, package_id",
	// Delta rows depend on batching and compaction; what they sum to may not.
	"site_counts": `SELECT jsonb_build_array(site, location, status, sum(n)) FROM site_count_deltas
		GROUP BY site, location, status HAVING sum(n) <> 0 ORDER BY site, location, status`,
	"site_bytes": `SELECT jsonb_build_array(site, sum(bytes)) FROM site_bytes_deltas
		GROUP BY site HAVING sum(bytes) <> 0 ORDER BY site`,
}

// Snapshot returns the whole projection as comparable text, table by table.
func Snapshot(ctx context.Context, db bun.IDB) (map[string][]string, error) {
	out := map[string][]string{}
	for name, q := range snapshotQueries {
		var rows []string
		if err := db.NewRaw(q).Scan(ctx, &rows); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", name, err)
		}
		out[name] = rows
	}
	return out, nil
}
