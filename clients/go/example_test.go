package imprint_test

import (
	"context"
	"fmt"
	"log"
	"os"

	imprint "github.com/imprint/imprint-go"
)

// The README's ten lines, compiled with the tests (not run: there is no server).
func Example() {
	ctx := context.Background()
	c, err := imprint.New(imprint.Options{URL: "http://imprint:3000", Token: os.Getenv("IMPRINT_TOKEN"),
		Instance: "checkout-7f9c", Labels: map[string]string{"region": "eu-west-1"}, CacheDir: "/var/cache/imprint"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	type Methods struct {
		Card bool `json:"card"`
	}
	methods, err := imprint.SubscribeJSON(ctx, c, "payments.methods", Methods{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(methods.Get().Card) // never blocks; the default until a version applies
	methods.OnChange(func(m Methods) { log.Printf("card payments now %v", m.Card) })
	go func() {
		for m := range methods.Changes() { // or a channel of changes (closed by Close)
			_ = m
		}
	}()
}
