package subject

// Dead letters of the work queue. When a request runs out of deliveries
// (MaxDeliver), JetStream leaves it in STAGING_REQUESTS and only says so in a
// core-NATS advisory, which nobody may be listening to. AdvisoryStream keeps
// those advisories, so a stager that was down still sees them, and DeadStream
// keeps the requests it moved out of the work queue.
const (
	// AdvisoryStream captures MAX_DELIVERIES advisories of STAGING_REQUESTS.
	AdvisoryStream = "STAGING_ADVISORIES"
	// DeadStream holds requests that ran out of deliveries (limits retention).
	DeadStream = "STAGING_DEAD"
	// DeadAll is DeadStream's subject filter: staging.dead.<site>.
	DeadAll = "staging.dead.>"
)

// MaxDeliveriesPrefix starts the subject of every MAX_DELIVERIES advisory.
const MaxDeliveriesPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// RequestAdvisoriesAll is AdvisoryStream's subject filter: MAX_DELIVERIES
// advisories of every consumer of the work queue.
const RequestAdvisoriesAll = MaxDeliveriesPrefix + RequestsStream + ".>"

// MaxDeliveries is the advisory subject of one consumer of the work queue.
func MaxDeliveries(durable string) string {
	return MaxDeliveriesPrefix + RequestsStream + "." + durable
}

// Dead is the dead-letter subject of a site: staging.dead.<site>. Three
// tokens, so it never lands in STAGING_EVENTS (staging.*).
func Dead(site string) string { return "staging.dead." + site }

// StagerAdvisoryDurable is the durable through which a site's stagers read
// their consumers' MAX_DELIVERIES advisories: stager-<site>-dead.
func StagerAdvisoryDurable(site string) string { return "stager-" + site + "-dead" }
