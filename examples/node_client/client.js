#!/usr/bin/env node
// CheckOrder from Node.js, loading proto/pretrade/v1/*.proto at run time (no generated code):
// the gateway API is plain gRPC + protobuf, usable from any language.
//
//   cd examples/node_client && npm install
//   PRETRADE_TOKEN=... node client.js --target 127.0.0.1:50051 --account ACC1 --symbol AAPL \
//       --side buy --qty 100 --price 189.12
//
// Prints the decision as JSON; exit code 0 ACCEPT, 1 REJECT, 2 error (like `pretrade check`).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const NANOS = 9;

// A decimal string as int64 nanos, exactly (string arithmetic, no binary floats).
function toNanos(text, field) {
  const match = /^(\d+)(?:\.(\d{1,9}))?$/.exec(String(text));
  if (!match) throw new Error(`${field}: not a decimal with at most ${NANOS} fraction digits: ${text}`);
  const fraction = (match[2] || '').padEnd(NANOS, '0');
  return (BigInt(match[1]) * 10n ** BigInt(NANOS) + BigInt(fraction)).toString();
}

function parseArgs(argv) {
  const args = { target: '127.0.0.1:50051', token: process.env.PRETRADE_TOKEN, side: 'buy' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-/g, '_');
    args[key] = argv[i + 1];
  }
  for (const required of ['token', 'account', 'symbol', 'qty']) {
    if (!args[required]) throw new Error(`missing --${required}${required === 'token' ? ' (or PRETRADE_TOKEN)' : ''}`);
  }
  return args;
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(`client.js: ${error.message}`);
    process.exit(2);
  }
  const definition = protoLoader.loadSync(path.join(PROTO_ROOT, 'pretrade/v1/gateway.proto'), {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const pretrade = grpc.loadPackageDefinition(definition).pretrade.v1;
  const client = new pretrade.GatewayService(args.target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.add('authorization', `Bearer ${args.token}`);
  const order = {
    client_order_id: args.client_order_id || `node-${Date.now()}-${process.pid}`,
    account: args.account,
    symbol: args.symbol,
    side: `SIDE_${args.side.toUpperCase()}`,
    order_type: args.price ? 'ORDER_TYPE_LIMIT' : 'ORDER_TYPE_MARKET',
    quantity_nanos: toNanos(args.qty, 'qty'),
    price_nanos: args.price ? toNanos(args.price, 'price') : '0',
  };
  const deadline = new Date(Date.now() + Number(args.timeout_ms || 5000));
  client.CheckOrder({ order }, metadata, { deadline }, (error, response) => {
    if (error) {
      console.error(`client.js: ${grpc.status[error.code]}: ${error.details}`);
      process.exit(2);
    }
    const decision = response.decision;
    console.log(JSON.stringify(decision));
    client.close();
    process.exit(decision.verdict === 'VERDICT_ACCEPT' ? 0 : 1);
  });
}

main();
