package store

import (
	"context"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// The archive's events: archive.package.archived (applied set-wise with the
// stager's events, see applyHot in outcome.go) and archive.package.removed.

// removed marks an archive copy gone. Arriving before the copy's archived
// event, it leaves a placeholder that the archived event fills in; a copy
// archived again after its removal is active again.
func (a *applier) removed(ctx context.Context, d decoded, v event.PackageRemoved) error {
	a.place("", v.Location)
	return a.exec(ctx, "remove archive copy", `INSERT INTO archive_copies (package_id, location, key, size_bytes, checksum, format,
			archived_at, status, removed_at, removed_reason)
		VALUES ($1, $2, $3, 0, '', '', $4, 'removed', $5, $6)
		ON CONFLICT (package_id, location) DO UPDATE SET
			status = CASE WHEN EXCLUDED.removed_at >= archive_copies.archived_at THEN 'removed' ELSE archive_copies.status END,
			removed_at = CASE WHEN EXCLUDED.removed_at >= archive_copies.archived_at
				THEN GREATEST(archive_copies.removed_at, EXCLUDED.removed_at) ELSE archive_copies.removed_at END,
			removed_reason = CASE WHEN EXCLUDED.removed_at >= archive_copies.archived_at
				AND (archive_copies.removed_at IS NULL OR EXCLUDED.removed_at >= archive_copies.removed_at)
				THEN EXCLUDED.removed_reason ELSE archive_copies.removed_reason END`,
		v.PackageID, v.Location, v.Key, d.Time, d.Time, v.Reason)
}

// archives applies archive.package.archived.
func (a *applier) archives(ctx context.Context, ds []decoded) error {
	if len(ds) == 0 {
		return nil
	}
	var pkg, loc, key, sum, format []string
	var size []int64
	var files []int
	var t []time.Time
	for _, d := range ds {
		v := d.data.(event.PackageArchived)
		pkg, loc, key, sum, format = append(pkg, v.PackageID), append(loc, v.Location), append(key, v.Key), append(sum, v.Checksum), append(format, v.Format)
		size, files, t = append(size, v.SizeBytes), append(files, v.FileCount()), append(t, d.Time)
	}
	if err := a.exec(ctx, "upsert packages", `INSERT INTO packages (package_id, size_bytes, checksum, format, first_archived_at)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[])
		ON CONFLICT (package_id) DO UPDATE SET first_archived_at = LEAST(packages.first_archived_at, EXCLUDED.first_archived_at)`,
		pkg, size, sum, format, t); err != nil {
		return err
	}
	return a.exec(ctx, "upsert archive copies", `INSERT INTO archive_copies (package_id, location, key, size_bytes, checksum, format, files, archived_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[], $8::timestamptz[])
		ON CONFLICT (package_id, location) DO UPDATE SET archived_at = LEAST(archive_copies.archived_at, EXCLUDED.archived_at),
			key = EXCLUDED.key, size_bytes = EXCLUDED.size_bytes, checksum = EXCLUDED.checksum, format = EXCLUDED.format,
			files = EXCLUDED.files,
			status = CASE WHEN archive_copies.removed_at IS NOT NULL AND archive_copies.removed_at >= EXCLUDED.archived_at
				THEN 'removed' ELSE 'active' END,
			removed_at = CASE WHEN archive_copies.removed_at IS NOT NULL AND archive_copies.removed_at >= EXCLUDED.archived_at
				THEN archive_copies.removed_at END,
			removed_reason = CASE WHEN archive_copies.removed_at IS NOT NULL AND archive_copies.removed_at >= EXCLUDED.archived_at
				THEN archive_copies.removed_reason ELSE '' END`,
		pkg, loc, key, size, sum,
		format, files, t)
}
