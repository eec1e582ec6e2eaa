// Package kvkey maps job and package ids onto JetStream KV keys. Ids match
// ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, which a KV key almost always is too,
// except that a key must not end in '.' nor contain "..". Such ids are
// stored as "=" + base64url(id): no id starts with '=', so the two forms
// never collide, and the common case stays readable in `nats kv ls`.
package kvkey

import (
	"encoding/base64"
	"strings"
)

// For returns the KV key of id.
func For(id string) string {
	if id != "" && !strings.HasSuffix(id, ".") && !strings.Contains(id, "..") {
		return id
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}
