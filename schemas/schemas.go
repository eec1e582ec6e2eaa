// Package schemas embeds the JSON Schemas (draft 2020-12) of every event's
// data, so that services validate what they receive and tests validate what
// the services emit against the very files in this directory.
//
// A schema's file name is the CloudEvents type without its "ccat." prefix
// plus ".json": type "ccat.staging.submit.v1" -> "staging.submit.v1.json".
package schemas

import "embed"

// FS holds every *.json file of this directory.
//
//go:embed *.json
var FS embed.FS

// BaseURI is the prefix of every schema's $id; an event's dataschema is
// BaseURI + file name.
const BaseURI = "https://github.com/ccatobs/ccat-staging/schemas/"
