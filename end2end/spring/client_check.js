#!/usr/bin/env node
// Checks Imprint's Spring Cloud Config endpoint with the unmodified npm client
// `cloud-config-client@1.6.2`, installed in NPM_DIR (the first argument).
//
//   node client_check.js NPM_DIR URL APP TOKEN 'dev:greeting=hello' … [--then 'dev:greeting=hi']
//
// For each PROFILE:KEY=VALUE, client.load({endpoint: URL, name: APP, profiles: PROFILE,
// label: 'main', auth: {user, pass: TOKEN}}) (Basic auth, the token as the password) and
// config.get(KEY) must read VALUE. With --then: prints "ready" on stderr and loads again
// every half second until the value is seen or 30 s pass. One JSON line on stdout; exit 1
// when a check fails.
'use strict'
const path = require('path')
const [npmDir, url, app, token, ...rest] = process.argv.slice(2)
const client = require(path.join(path.resolve(npmDir), 'node_modules', 'cloud-config-client'))

function parse (spec) {
  const [profile, kv] = [spec.slice(0, spec.indexOf(':')), spec.slice(spec.indexOf(':') + 1)]
  const i = kv.indexOf('=')
  return { profile, key: kv.slice(0, i), value: kv.slice(i + 1) }
}

async function read ({ profile, key }) {
  const options = { endpoint: url, name: app, profiles: profile, label: 'main' }
  if (token) options.auth = { user: 'imprint', pass: token }
  const config = await client.load(options)
  return config.get(key)
}

async function main () {
  const then = rest.indexOf('--then')
  const expects = then >= 0 ? rest.slice(0, then) : rest
  const seen = {}
  for (const spec of expects) {
    const c = parse(spec)
    const got = await read(c)
    seen[spec] = got
    if (String(got) !== c.value) {
      console.log(JSON.stringify({ ok: false, check: spec, got }))
      return 1
    }
  }
  if (then >= 0) {
    const spec = rest[then + 1]
    const c = parse(spec)
    process.stderr.write('ready\n')
    const deadline = Date.now() + 30000
    let got
    while (Date.now() < deadline) {
      got = await read(c)
      if (String(got) === c.value) break
      await new Promise(resolve => setTimeout(resolve, 500))
    }
    seen[spec] = got
    if (String(got) !== c.value) {
      console.log(JSON.stringify({ ok: false, check: spec, got }))
      return 1
    }
  }
  console.log(JSON.stringify({ ok: true, seen }))
  return 0
}

main().then(code => process.exit(code), e => { console.log(JSON.stringify({ ok: false, error: String(e) })); process.exit(1) })
