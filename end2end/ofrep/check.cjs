// The OpenFeature JavaScript server SDK with its OFREP provider, unchanged from npm, against
// Imprint: evaluates one flag for each given context and compares value, reason, variant and
// the `pinned` metadata with what is expected. Prints what it checked; exits 1 on a mismatch.
//   NODE_PATH=NPM_DIR/node_modules node check.cjs BASE_URL TOKEN FLAG CHECKS_JSON
const { OpenFeature } = require("@openfeature/server-sdk");
const { OFREPProvider } = require("@openfeature/ofrep-provider");

async function main() {
  const [url, token, flag, checks] = process.argv.slice(2);
  await OpenFeature.setProviderAndWait(
    new OFREPProvider({ baseUrl: url, headers: { Authorization: `Bearer ${token}` } }),
  );
  const client = OpenFeature.getClient("imprint-e2e");
  let failed = 0;
  for (const check of JSON.parse(checks)) {
    const d = await client.getStringDetails(flag, "code-default", check.context);
    const got = { value: d.value, reason: d.reason, variant: d.variant, pinned: d.flagMetadata?.pinned };
    const ok = Object.entries(check.expect).every(([k, v]) => got[k] === v) && !d.errorCode;
    if (!ok) failed += 1;
    console.log(JSON.stringify({ client: "javascript", context: check.context, got, error: d.errorMessage ?? null, ok }));
  }
  await OpenFeature.close();
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
