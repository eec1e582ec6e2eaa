package natscluster

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

// parseConfig reads nats-server.conf with env, as a node would.
func parseConfig(t *testing.T, env map[string]string) *server.Options {
	t.Helper()
	base := map[string]string{
		"NATS_SERVER_NAME": "nats-1", "NATS_HOST": "127.0.0.1", "NATS_PORT": "4222", "NATS_MONITOR_PORT": "8222",
		"NATS_CLUSTER_PORT": "6222", "NATS_STORE_DIR": t.TempDir(), "NATS_MAX_FILE_STORE": "1GB", "NATS_ROUTE_PASSWORD": "r",
		"NATS_ROUTE_1": "nats-route://route:r@127.0.0.1:6222", "NATS_ROUTE_2": "nats-route://route:r@127.0.0.1:6223",
		"NATS_ROUTE_3": "nats-route://route:r@127.0.0.1:6224",
	}
	for user, pw := range passwords {
		base["NATS_"+strings.ToUpper(strings.ReplaceAll(user, "-", "_"))+"_PASSWORD"] = pw
	}
	for k, v := range env {
		base[k] = v
	}
	conf, err := filepath.Abs("nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts := processConfig(t, conf, base)
	return opts
}

func user(opts *server.Options, name string) *server.User {
	for _, u := range opts.Users {
		if u.Username == name {
			return u
		}
	}
	return nil
}

// stagerRights is what a stager of site needs, derived from shared/subject:
// if a durable, subject or stream is renamed there, this test, not a
// deployment, finds out that accounts.conf is stale.
func stagerRights(site string) (pub, sub []string) {
	pub = []string{subject.Started, subject.Done, subject.Failed, subject.Progress, subject.Dead(site), "$JS.API.INFO"}
	for _, s := range []string{subject.ArchiveStream, subject.EventsStream, subject.RequestsStream, "KV_" + subject.StagerBucket, subject.AdvisoryStream, subject.DeadStream} {
		pub = append(pub, "$JS.API.STREAM.INFO."+s)
	}
	for _, p := range subject.Priorities {
		d := subject.StagerDurable(site, p)
		pub = append(pub,
			fmt.Sprintf("$JS.API.CONSUMER.CREATE.%s.%s.%s", subject.RequestsStream, d, subject.Request(site, p)),
			fmt.Sprintf("$JS.API.CONSUMER.INFO.%s.%s", subject.RequestsStream, d),
			fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", subject.RequestsStream, d),
			fmt.Sprintf("$JS.ACK.%s.%s.>", subject.RequestsStream, d))
	}
	dead := subject.StagerAdvisoryDurable(site)
	pub = append(pub,
		fmt.Sprintf("$JS.API.CONSUMER.CREATE.%s.%s", subject.AdvisoryStream, dead),
		fmt.Sprintf("$JS.API.CONSUMER.INFO.%s.%s", subject.AdvisoryStream, dead),
		fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", subject.AdvisoryStream, dead),
		fmt.Sprintf("$JS.ACK.%s.%s.>", subject.AdvisoryStream, dead),
		"$JS.API.STREAM.MSG.GET."+subject.RequestsStream, "$JS.API.DIRECT.GET."+subject.RequestsStream, "$JS.API.STREAM.MSG.DELETE."+subject.RequestsStream,
		"$KV."+subject.StagerBucket+"."+site+".>",
		"$JS.API.STREAM.INFO.KV_"+subject.CancelledBucket,
		"$JS.API.DIRECT.GET.KV_"+subject.CancelledBucket, "$JS.API.DIRECT.GET.KV_"+subject.CancelledBucket+".>",
		"$JS.API.STREAM.MSG.GET.KV_"+subject.CancelledBucket,
		// the watch of CANCELLED: an ordered consumer with flow control
		"$JS.API.CONSUMER.CREATE.KV_"+subject.CancelledBucket, "$JS.API.CONSUMER.CREATE.KV_"+subject.CancelledBucket+".>",
		"$JS.API.CONSUMER.DELETE.KV_"+subject.CancelledBucket+".*", "$JS.FC.KV_"+subject.CancelledBucket+".>")
	cleanup := subject.StagerCleanupDurable(site)
	pub = append(pub, subject.Released,
		"$JS.API.STREAM.INFO."+subject.CleanupStream,
		fmt.Sprintf("$JS.API.CONSUMER.CREATE.%s.%s.%s", subject.CleanupStream, cleanup, subject.Cleanup(site)),
		fmt.Sprintf("$JS.API.CONSUMER.INFO.%s.%s", subject.CleanupStream, cleanup),
		fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", subject.CleanupStream, cleanup),
		fmt.Sprintf("$JS.ACK.%s.%s.>", subject.CleanupStream, cleanup),
		"$JS.API.STREAM.INFO.KV_"+subject.PlannerRefsBucket,
		"$JS.API.DIRECT.GET.KV_"+subject.PlannerRefsBucket+".$KV."+subject.PlannerRefsBucket+"."+site+".>",
		"$KV."+subject.PlannerRefsBucket+"."+site+".>",
		"$JS.API.STREAM.INFO.KV_"+lease.Bucket,
		"$JS.API.DIRECT.GET.KV_"+lease.Bucket+".$KV."+lease.Bucket+"."+site+".>",
		"$KV."+lease.Bucket+"."+site+".>",
		// the already_present check's leader read of a lease
		"$JS.API.STREAM.MSG.GET.KV_"+lease.Bucket)
	obj := "OBJ_" + subject.ManifestsBucket
	pub = append(pub, "$JS.API.STREAM.INFO."+obj,
		"$JS.API.DIRECT.GET."+obj, "$JS.API.DIRECT.GET."+obj+".>", "$JS.API.STREAM.MSG.GET."+obj,
		"$JS.API.CONSUMER.CREATE."+obj, "$JS.API.CONSUMER.CREATE."+obj+".>", "$JS.API.CONSUMER.DELETE."+obj+".*",
		"$JS.FC."+obj+".>")
	return pub, []string{"_INBOX.>"}
}

func TestStagerUsersMatchTopologyAndSubjects(t *testing.T) {
	opts := parseConfig(t, nil)
	topo, err := topology.Load("../topology.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, site := range topo.SiteNames() {
		t.Run(site, func(t *testing.T) {
			u := user(opts, "stager-"+site)
			if u == nil || u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
				t.Fatalf("no stager-%s user with publish and subscribe permissions in accounts.conf", site)
			}
			pub, sub := stagerRights(site)
			for _, c := range []struct {
				what      string
				got, want []string
			}{
				{"publish", u.Permissions.Publish.Allow, pub},
				{"subscribe", u.Permissions.Subscribe.Allow, sub},
			} {
				got, want := slices.Sorted(slices.Values(c.got)), slices.Sorted(slices.Values(c.want))
				if !slices.Equal(got, want) {
					t.Errorf("%s allow of stager-%s:\n got  %q\n want %q", c.what, site, got, want)
				}
			}
		})
	}
}

// Every user but admin has an allow list, so nothing unlisted slips through;
// and every user is in the STAGING account with JetStream.
func TestEveryServiceUserIsRestricted(t *testing.T) {
	opts := parseConfig(t, nil)
	for name := range passwords {
		if name == "sys" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			u := user(opts, name)
			if u == nil {
				t.Fatalf("no user %s", name)
			}
			if u.Account == nil || u.Account.Name != "STAGING" {
				t.Errorf("user %s is not in account STAGING", name)
			}
			restricted := u.Permissions != nil && u.Permissions.Publish != nil && len(u.Permissions.Publish.Allow) > 0 &&
				u.Permissions.Subscribe != nil && len(u.Permissions.Subscribe.Allow) > 0
			if name == "admin" && restricted || name != "admin" && !restricted {
				t.Errorf("user %s: restricted = %v", name, restricted)
			}
		})
	}
}

// An operator may put a bcrypt hash in the node's environment instead of a
// password; the value must survive the config's variable substitution.
func TestBcryptHashFromEnvironment(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	opts := parseConfig(t, map[string]string{"NATS_PLANNER_PASSWORD": string(hash)})
	if u := user(opts, "planner"); u == nil || u.Password != string(hash) {
		t.Fatalf("planner password = %v, want the hash %s", u, hash)
	}
}
