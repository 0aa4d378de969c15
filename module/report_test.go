package module

import (
	"strings"
	"testing"
	"time"
)

var statusNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const week = DefaultStatusWindow

// call is a row whose latest call, ago before statusNow, worked.
func call(s Service, from, to, cred, key string, ago time.Duration) Usage {
	t := statusNow.Add(-ago)
	return Usage{UsageKey: UsageKey{Service: s, FromHost: from, ToHost: to, Credential: cred, Key: key},
		LastUsed: t, LastOK: t}
}

// failed makes u's latest call fail with f.
func failed(u Usage, f Failure) Usage {
	u.LastFailed, u.LastFailure = u.LastUsed, f
	u.LastOK = u.LastUsed.Add(-time.Hour)
	return u
}

// switched is a call from an app that already calls Kustom with its own key.
func switched(s Service, ago time.Duration) Usage {
	return call(s, KustomProduction, KustomProduction, "", KeyKept, ago)
}

// longAgo is enough observation for the default window.
var longAgo = statusNow.Add(-30 * 24 * time.Hour)

func TestRowStates(t *testing.T) {
	cases := []struct {
		name string
		u    Usage
		want RowState
	}{
		{"switched: Kustom host, own key, accepted", switched(Checkout, time.Minute), StateSwitched},
		{"playground switched", call(Checkout, KustomPlayground, KustomPlayground, "", KeyKept, time.Minute), StateSwitched},
		{"Klarna host, swapped key", call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, time.Minute), StateKlarnaHost},
		{"Klarna host, own key", call(OrderManagement, "api-na.klarna.com", KustomProduction, "", KeyKept, time.Hour), StateKlarnaHost},
		{"sidecar, swapped key", call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute), StateBridged},
		{"sidecar, own key", call(Checkout, LocalHost, KustomProduction, "", KeyKept, time.Minute), StateBridged},
		{"Kustom host, swapped key", call(Checkout, KustomProduction, KustomProduction, "shop1", KeySwapped, time.Minute), StateBridged},
		{"a mapped custom host", call(Settlement, "klarna.corp.example", KustomProduction, "", KeyKept, time.Minute), StateBridged},
		{"unreachable", failed(switched(Checkout, time.Minute), FailureUnreachable), StateFailing},
		{"timeout", failed(switched(Checkout, time.Minute), FailureTimeout), StateFailing},
		{"5xx", failed(call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute), Failure5xx), StateFailing},
		{"key rejected", failed(switched(Checkout, time.Minute), FailureKeyRejected), StateKeyRejected},
		{"key rejected on a swapped key", failed(call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute), FailureKeyRejected), StateKeyRejected},
		{"failed, then worked again", func() Usage {
			u := failed(switched(Checkout, time.Minute), Failure5xx)
			u.LastOK = u.LastFailed.Add(time.Second)
			return u
		}(), StateSwitched},
		{"worked, then failed in the same instant", func() Usage {
			u := failed(switched(Checkout, time.Minute), FailureUnreachable)
			u.LastOK = u.LastFailed
			return u
		}(), StateFailing},
		{"used, never answered in the window", Usage{UsageKey: UsageKey{Service: Checkout, FromHost: KustomProduction,
			ToHost: KustomProduction, Key: KeyKept}, LastUsed: statusNow.Add(-time.Minute), LastOK: statusNow.Add(-8 * 24 * time.Hour)}, StateFailing},
		{"aged out of the window", call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, 8*24*time.Hour), StateNotUsed},
		{"a failure that aged out, then success", func() Usage {
			u := switched(Checkout, time.Minute)
			u.LastFailed, u.LastFailure = statusNow.Add(-8*24*time.Hour), FailureKeyRejected
			return u
		}(), StateSwitched},
		// A success stamped an hour ahead cannot be ordered against this
		// clock: not evidence that calls work.
		{"another instance's clock runs ahead", call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, -time.Hour), StateFailing},
		{"a little skew is ordered", call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, -30*time.Second), StateKlarnaHost},
		{"a success from a clock ahead does not hide a failure", func() Usage {
			u := failed(switched(Checkout, time.Minute), Failure5xx)
			u.LastOK = statusNow.Add(time.Hour)
			return u
		}(), StateFailing},
		{"the latest calls went unanswered after an older success", func() Usage {
			u := switched(Checkout, 6*24*time.Hour)
			u.LastUsed = statusNow.Add(-10 * time.Minute)
			return u
		}(), StateFailing},
		{"a call still in flight", func() Usage {
			u := switched(Checkout, time.Hour)
			u.LastUsed = statusNow.Add(-10 * time.Second)
			return u
		}(), StateSwitched},
		{"ahead and failing", failed(switched(Checkout, -time.Hour), Failure5xx), StateFailing},
		{"Klarna Payments passed through to Klarna", call(Unmatched, "api.klarna.com", "api.klarna.com", "", KeyKept, time.Minute), StateSwitched},
		{"Klarna Payments through the sidecar", call(Unmatched, LocalHost, "api.klarna.com", "", KeyKept, time.Minute), StateBridged},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := RowStateOf(c.u, statusNow, week); got != c.want {
				t.Errorf("state %q, want %q", got, c.want)
			}
		})
	}
}

func TestVerdicts(t *testing.T) {
	cases := []struct {
		name     string
		usage    []Usage
		since    time.Time
		window   time.Duration
		want     Verdict
		stores   []string // action_required's stores, in order
		summary  string   // a part of the summary
		complete bool
	}{
		{name: "fresh start: nothing seen, just began", since: statusNow.Add(-time.Minute),
			want: VerdictNotEnough, summary: "no call has been seen"},
		{name: "no calls ever, observed long enough", since: longAgo,
			want: VerdictNotEnough, summary: "no call has been seen"},
		{name: "only switched calls, but observing for 3 hours of 7 days", since: statusNow.Add(-3 * time.Hour),
			usage: []Usage{switched(Checkout, time.Minute)}, want: VerdictNotEnough, summary: "observing for 3 hours of 7 days"},
		{name: "observing since unknown", usage: []Usage{switched(Checkout, time.Minute)}, want: VerdictNotEnough},
		{name: "observing since in the future (a clock ahead)", since: statusNow.Add(time.Hour),
			usage: []Usage{switched(Checkout, time.Minute)}, want: VerdictNotEnough},
		{name: "switched, observed long enough", since: longAgo,
			usage: []Usage{switched(Checkout, time.Minute), switched(OrderManagement, time.Hour)},
			want:  VerdictComplete, complete: true, summary: "Switch complete"},
		{name: "observed exactly the window", since: statusNow.Add(-week),
			usage: []Usage{switched(Checkout, time.Minute)}, want: VerdictComplete, complete: true},
		{name: "all calls aged out, earlier ones seen", since: longAgo,
			usage: []Usage{switched(Checkout, 9*24*time.Hour)}, want: VerdictComplete, complete: true},
		{name: "Klarna call aged out", since: longAgo,
			usage: []Usage{call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, 8*24*time.Hour), switched(Checkout, time.Minute)},
			want:  VerdictComplete, complete: true},
		{name: "Klarna host", since: longAgo,
			usage: []Usage{call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, time.Minute), switched(Checkout, time.Minute)},
			want:  VerdictActionRequired, stores: []string{"shop1"}, summary: "store shop1 still depends on the shim"},
		{name: "bridged sidecar, even on a fresh start", since: statusNow.Add(-time.Minute),
			usage: []Usage{call(Checkout, LocalHost, KustomProduction, "shop2", KeySwapped, time.Second)},
			want:  VerdictActionRequired, stores: []string{"shop2"}},
		{name: "stores grouped, own keys last", since: longAgo,
			usage: []Usage{
				call(Checkout, LocalHost, KustomProduction, "", KeyKept, time.Minute),
				call(Checkout, "api.klarna.com", KustomProduction, "zeta", KeySwapped, time.Minute),
				call(OrderManagement, "api.klarna.com", KustomProduction, "alpha", KeySwapped, time.Minute),
				call(Settlement, KustomProduction, KustomProduction, "alpha", KeySwapped, time.Minute),
			},
			want: VerdictActionRequired, stores: []string{"alpha", "zeta", ""},
			summary: "store alpha, store zeta and apps sending their own key still depend on the shim"},
		{name: "failing beats action required", since: longAgo,
			usage: []Usage{call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, time.Minute),
				failed(switched(OrderManagement, time.Minute), FailureUnreachable)},
			want: VerdictFailing, stores: []string{"shop1", ""}, summary: "Order management calls from apps sending their own key to api.kustom.co fail (upstream_unreachable)"},
		{name: "Kustom unreachable on a sidecar", since: longAgo,
			usage: []Usage{failed(call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute), FailureUnreachable)},
			want:  VerdictFailing, stores: []string{"shop1"}},
		{name: "key rejected", since: longAgo,
			usage: []Usage{failed(switched(Checkout, time.Minute), FailureKeyRejected)},
			want:  VerdictFailing, stores: []string{""}, summary: "kustom_rejected_key"},
		{name: "no answer", since: longAgo,
			usage: []Usage{{UsageKey: UsageKey{Service: Checkout, FromHost: KustomProduction, ToHost: KustomProduction, Key: KeyKept},
				LastUsed: statusNow.Add(-time.Minute)}},
			want: VerdictFailing, summary: "(no answer)"},
		{name: "clocks ahead never read as working", since: longAgo,
			usage: []Usage{call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, -2*time.Hour)},
			want:  VerdictFailing, stores: []string{"shop1"}, summary: "(no answer)"},
		{name: "a switched row whose latest calls went unanswered", since: longAgo,
			usage: []Usage{func() Usage {
				u := switched(Checkout, 6*24*time.Hour)
				u.LastUsed = statusNow.Add(-10 * time.Minute)
				return u
			}()},
			want: VerdictFailing, stores: []string{""}, summary: "(no answer)"},
		{name: "a short window", since: statusNow.Add(-5 * time.Second), window: 4 * time.Second,
			usage: []Usage{switched(Checkout, time.Second)}, want: VerdictComplete, complete: true},
		{name: "a short window, older Klarna call aged out", since: statusNow.Add(-time.Minute), window: 4 * time.Second,
			usage: []Usage{call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, 10*time.Second), switched(Checkout, time.Second)},
			want:  VerdictComplete, complete: true},
		{name: "Klarna Payments passed to Klarna does not block", since: longAgo,
			usage: []Usage{switched(Checkout, time.Minute), call(Unmatched, "api.klarna.com", "api.klarna.com", "", KeyKept, time.Minute)},
			want:  VerdictComplete, complete: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := BuildStatus(c.usage, c.since, statusNow, c.window)
			if rep.Verdict != c.want || rep.SwitchComplete != c.complete {
				t.Errorf("verdict %q complete %v, want %q %v; rows %+v", rep.Verdict, rep.SwitchComplete, c.want, c.complete, rep.Services)
			}
			if rep.SwitchComplete != (rep.Verdict == VerdictComplete) {
				t.Error("switch_complete disagrees with the verdict")
			}
			var stores []string
			for _, g := range rep.ActionRequired {
				stores = append(stores, g.Store)
				for _, r := range g.Rows {
					if !r.State.Blocks() || r.ActionRequired == "" || r.Credential != g.Store {
						t.Errorf("store %q lists row %+v", g.Store, r)
					}
				}
			}
			if strings.Join(stores, ",") != strings.Join(c.stores, ",") {
				t.Errorf("stores %q, want %q", stores, c.stores)
			}
			if !strings.Contains(rep.Summary(), c.summary) {
				t.Errorf("summary %q lacks %q", rep.Summary(), c.summary)
			}
			// Every Kustom service has a row.
			seen := map[Service]bool{}
			for _, r := range rep.Services {
				seen[r.Service] = true
			}
			for _, s := range Services {
				if !seen[s] {
					t.Errorf("no row for %s", s)
				}
			}
		})
	}
}

// Whatever the rows, the report is complete only with enough evidence, a
// call seen, and no blocking row: checked over every combination of a
// handful of rows and observation times.
func TestNeverCompleteWithoutEvidence(t *testing.T) {
	rows := []Usage{
		switched(Checkout, time.Minute),
		call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, time.Minute),
		call(OrderManagement, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute),
		call(OrderManagement, KustomProduction, KustomProduction, "shop1", KeySwapped, time.Minute),
		failed(switched(Settlement, time.Minute), Failure5xx),
		failed(switched(Settlement, time.Minute), FailureKeyRejected),
		switched(HostedPaymentPage, 8*24*time.Hour),
	}
	for mask := 0; mask < 1<<len(rows); mask++ {
		var us []Usage
		for i, r := range rows {
			if mask&(1<<i) != 0 {
				us = append(us, r)
			}
		}
		for _, since := range []time.Time{{}, statusNow, statusNow.Add(-time.Hour), longAgo} {
			rep := BuildStatus(us, since, statusNow, week)
			blocking := mask&0b111110 != 0
			want := !blocking && len(us) > 0 && since.Equal(longAgo)
			if rep.SwitchComplete != want {
				t.Fatalf("rows %b since %v: complete %v, want %v", mask, since, rep.SwitchComplete, want)
			}
		}
	}
}

func TestRowWords(t *testing.T) {
	cases := []struct {
		u          Usage
		want       []string
		wantAction bool
	}{
		{call(Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped, time.Minute),
			[]string{"api.klarna.com", "https://api.kustom.co", `"shop1"`, "Generate new"}, true},
		{call(Checkout, LocalHost, KustomProduction, "", KeyKept, time.Minute),
			[]string{"base URL", "https://api.kustom.co", "already works"}, true},
		{call(Checkout, KustomProduction, KustomProduction, "shop1", KeySwapped, time.Minute),
			[]string{"already calls api.kustom.co", `"shop1"`}, true},
		{failed(switched(Checkout, time.Minute), FailureUnreachable), []string{"could not reach api.kustom.co", "egress"}, true},
		{failed(switched(Checkout, time.Minute), FailureTimeout), []string{"did not answer in time"}, true},
		{failed(switched(Checkout, time.Minute), Failure5xx), []string{"server error"}, true},
		{failed(switched(Checkout, time.Minute), FailureKeyRejected), []string{"401/403", "Kustom Portal", "app's own configuration"}, true},
		{failed(call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute), FailureKeyRejected),
			[]string{"credential \"shop1\" (kustom_api_key)"}, true},
		{switched(Checkout, time.Minute), []string{"switched", "own key", "remove that override"}, false},
	}
	for _, c := range cases {
		r := judgeRow(c.u, statusNow, week)
		text := r.ActionRequired + r.Note
		if (r.ActionRequired != "") != c.wantAction {
			t.Errorf("%+v: action %q note %q", c.u.UsageKey, r.ActionRequired, r.Note)
		}
		for _, w := range c.want {
			if !strings.Contains(text, w) {
				t.Errorf("%+v (%s): %q lacks %q", c.u.UsageKey, r.State, text, w)
			}
		}
	}
}

func TestHumanAndRelativeTime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		7 * 24 * time.Hour: "7 days", 24 * time.Hour: "1 day", 36 * time.Hour: "36 hours",
		time.Hour: "1 hour", 90 * time.Minute: "90 minutes", 90 * time.Second: "1m30s", 4 * time.Second: "4 seconds",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for ago, want := range map[time.Duration]string{
		-time.Hour: "just now", 30 * time.Second: "just now", time.Minute: "1 minute ago", 3 * time.Minute: "3 minutes ago",
		time.Hour: "1 hour ago", 47 * time.Hour: "47 hours ago", 48 * time.Hour: "2 days ago", 30 * 24 * time.Hour: "30 days ago",
	} {
		if got := relativeTime(statusNow.Add(-ago), statusNow); got != want {
			t.Errorf("relativeTime(-%v) = %q, want %q", ago, got, want)
		}
	}
}
