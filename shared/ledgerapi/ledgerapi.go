// Package ledgerapi is the ledger's read API (/v1): its JSON shapes
// (types.go), which the ledger's handlers encode, and a client that decodes
// them, for the demo, stagectl, the planner's reconciler and tests. Server
// and clients share this one definition, checked against openapi.json.
package ledgerapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

func (p *Problem) Error() string {
	if p.Detail != "" {
		return fmt.Sprintf("%d %s: %s", p.Status, p.Title, p.Detail)
	}
	return fmt.Sprintf("%d %s", p.Status, p.Title)
}

// ErrNotFound is wrapped by errors for 404 answers.
var ErrNotFound = errors.New("not found")

// Client talks to one ledger. The zero HTTP uses a client with a 30 s timeout.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:8080
	Token   string // bearer token, if the ledger requires one
	HTTP    *http.Client
}

// Get decodes the JSON answer of GET path (relative to BaseURL) into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.BaseURL, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("ledger api: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("ledger api: read %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		p := &Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode)}
		_ = json.Unmarshal(body, p)
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("ledger api %s: %w: %w", path, ErrNotFound, p)
		}
		return fmt.Errorf("ledger api %s: %w", path, p)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("ledger api: decode %s: %w", path, err)
	}
	return nil
}

// Job returns one job with its packages.
func (c *Client) Job(ctx context.Context, id string) (Job, error) {
	var j Job
	err := c.Get(ctx, "/v1/jobs/"+url.PathEscape(id), &j)
	return j, err
}

// Jobs returns one page of jobs matching query (status, site, limit, cursor…).
func (c *Client) Jobs(ctx context.Context, query url.Values) (JobList, error) {
	var l JobList
	p := "/v1/jobs"
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	err := c.Get(ctx, p, &l)
	return l, err
}

// Wait polls a job every interval until done(job) is true or ctx ends; a job
// the ledger does not know yet is polled again.
func (c *Client) Wait(ctx context.Context, id string, interval time.Duration, done func(Job) bool) (Job, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		j, err := c.Job(ctx, id)
		if err == nil && done(j) {
			return j, nil
		}
		// Any error (not yet known, ledger restarting) is retried until ctx ends.
		select {
		case <-ctx.Done():
			if err != nil {
				return j, fmt.Errorf("wait for job %s: %w (last error: %v)", id, ctx.Err(), err)
			}
			return j, fmt.Errorf("wait for job %s: %w (status %s)", id, ctx.Err(), j.Status)
		case <-t.C:
		}
	}
}
