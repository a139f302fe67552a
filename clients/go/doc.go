// Package imprint is the Go consumer client of Imprint: a node subscribes to topics and
// always holds a valid, recent value of each.
//
// One background goroutine long-polls all of a Client's subscriptions in one request
// (POST /api/v1/poll), fetches each update (inline, or streamed from its data_url with
// Range resume), verifies its size and SHA-256, runs the subscription's decoder and swaps
// the value in atomically; the outcome of every version is reported on the next poll. A
// disk cache and the server's object-store snapshot serve the start-up when the server is
// unreachable; when the newest version does not apply at start-up, older ones released to
// the node's labels are tried. The protocol is docs/protocol.md of the Imprint repository.
//
//	c, err := imprint.New(imprint.Options{URL: "http://imprint:3000", Instance: "i-0abc",
//		Labels: map[string]string{"region": "eu-west-1"}, CacheDir: "/var/cache/imprint"})
//	if err != nil { ... }
//	defer c.Close()
//	methods, err := imprint.SubscribeJSON(ctx, c, "payments.methods", Methods{})
//	now := methods.Get() // never blocks: the default until a version applies
//
// The module has no dependency beyond the standard library.
package imprint
