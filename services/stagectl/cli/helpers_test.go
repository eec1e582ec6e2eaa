package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// result is one stagectl invocation's outcome.
type result struct {
	code           int
	stdout, stderr string
}

// stagectl runs the CLI in-process with exactly the environment given (no
// HOME, so no per-user config file interferes).
func stagectl(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(t.Context(), append([]string{"stagectl"}, args...), func(k string) string { return env[k] },
		strings.NewReader(stdin), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
