package ledger_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/chromedp/chromedp"
)

// TestStatusPageInChromium drives the status page in headless Chromium and
// checks what a person would see: the job appears, its bar moves, it turns
// completed — without anyone reloading the page.
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is needed for this test (apt-get install -y chromium): %v", err)
	}
	e := start(t, nil)
	msgs := jobEvents(t, scenario.Job{ID: "seen-in-browser", Packages: 1, Progress: 2})
	// First everything up to the first progress report (a third of the bytes).
	var i int
	for i = range msgs {
		if msgs[i].Env.Type == event.TypeProgress {
			break
		}
	}
	first, rest := msgs[:i+1], msgs[i+1:]

	actx, cancel := chromedp.NewExecAllocator(t.Context(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Headless)...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Navigate(e.base+"/")); err != nil {
		t.Fatalf("open the status page: %v", err)
	}
	type row struct {
		Status string `json:"status"`
		Pct    int    `json:"pct"`
		Text   string `json:"text"`
	}
	// look reads the job's row as rendered; the page reloads itself, so a
	// read may land between two loads and find nothing.
	look := func() (row, bool) {
		r, err := chromedp.Run(ctx, chromedp.Evaluate[*row](`(() => {
			const tr = document.querySelector('tr[data-job="seen-in-browser"]');
			if (!tr) return null;
			const bar = tr.querySelector('[data-pct]');
			return {status: tr.dataset.status, pct: parseInt(bar.style.width), text: tr.innerText};
		})()`))
		if err != nil || r == nil {
			return row{}, false
		}
		return *r, true
	}
	waitFor := func(what string, ok func(row) bool) row {
		t.Helper()
		var r row
		poll.Until(t, 30*time.Second, "the status page to show "+what, func() error {
			var found bool
			if r, found = look(); found && ok(r) {
				return nil
			}
			return fmt.Errorf("last: %+v, found %v", r, found)
		})
		return r
	}
	if r, found := look(); found {
		t.Fatalf("the job is on the page before any event: %+v", r)
	}
	e.publish(first...)
	r := waitFor("the job in progress with a partial bar", func(r row) bool { return r.Status == "in_progress" && r.Pct > 0 && r.Pct < 100 })
	t.Logf("in progress: %+v", r)
	e.publish(rest...)
	r = waitFor("the job completed with a full bar", func(r row) bool { return r.Status == "completed" && r.Pct == 100 })
	if want := "1/1"; !strings.Contains(r.Text, want) {
		t.Errorf("row text %q lacks %q", r.Text, want)
	}
	if title, err := chromedp.Run(ctx, chromedp.Title()); err != nil || title != "ccat-staging ledger" {
		t.Errorf("title = %q, %v", title, err)
	}
}
