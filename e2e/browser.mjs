// The demo in a real browser: headless Chromium (Debian's) driven through
// playwright-core, two independent browser profiles as two devices of one
// user. Usage: node e2e/browser.mjs BASE_URL ARTIFACT_DIR (scripts/browser-e2e
// serves the demo and passes its address).
import http from 'node:http';
import { mkdir } from 'node:fs/promises';
import { chromium } from 'playwright-core';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node e2e/browser.mjs BASE_URL ARTIFACT_DIR');
  process.exit(2);
}
await mkdir(artifacts, { recursive: true });

const user = `e2e-${process.pid}`;
const fail = (message) => {
  throw new Error(message);
};
const shot = (page, name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });

/** Logs `page` in as `user` through the login form. */
async function logIn(page) {
  await page.goto(`${base}/`);
  if (!(await page.content()).includes('Please log in')) fail('the first visit is not offered a login');
  await page.click('a[href="/login"]');
  await page.fill('input[name="user_id"]', user);
  await page.click('form[action="/login"] button[type="submit"]');
  await page.waitForURL(`${base}/`);
  const greeting = await page.textContent('h1');
  if (!greeting.includes(`logged in as ${user}`)) fail(`after login the page says: ${greeting}`);
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
// A page on another port, which a victim's browser visits while logged in:
// it posts the demo's logout form to the demo without a token.
const attacker = http.createServer((_, response) => {
  response.setHeader('content-type', 'text/html');
  response.end(`<!doctype html><title>win a prize</title>
<form id="f" method="post" action="${base}/logout_all_devices"><input name="csrf_token" value="guess"></form>
<script>document.getElementById('f').submit()</script>`);
});
await new Promise((resolve) => attacker.listen(0, '127.0.0.1', resolve));
const evil = `http://127.0.0.1:${attacker.address().port}`;

try {
  // Two profiles: nothing shared, as two devices.
  const laptop = await (await browser.newContext()).newPage();
  const phone = await (
    await browser.newContext({
      userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1',
      viewport: { width: 390, height: 844 },
    })
  ).newPage();
  await logIn(laptop);
  await logIn(phone);
  await shot(laptop, '1-laptop-logged-in');

  await laptop.goto(`${base}/devices`);
  const revokeButtons = await laptop.locator('form[action="/devices/revoke"]').count();
  if (revokeButtons !== 1) fail(`/devices on the laptop offers to revoke ${revokeButtons} devices, not the phone alone`);
  if (!(await laptop.content()).includes('iPhone')) fail('/devices does not show the phone');
  await shot(laptop, '2-laptop-devices-both');

  // A cross-site form post from another port is refused, and changes nothing.
  const refused = phone.waitForResponse((r) => r.url() === `${base}/logout_all_devices`);
  await phone.goto(evil);
  const answer = await refused;
  if (answer.status() !== 403) fail(`the cross-site post got ${answer.status()}, not 403`);
  await shot(phone, '3-phone-cross-site-post-refused');
  await phone.goto(`${base}/`);
  if (!(await phone.content()).includes(`logged in as ${user}`)) fail('the cross-site post logged the phone out');

  // The laptop logs out its other devices; the phone lands on the login page.
  await laptop.goto(`${base}/devices`);
  await laptop.click('form[action="/logout_other_devices"] button');
  await laptop.waitForURL(`${base}/devices`);
  if ((await laptop.locator('form[action="/devices/revoke"]').count()) !== 0) fail('the phone is still listed');
  await shot(laptop, '4-laptop-after-logging-out-others');
  await phone.goto(`${base}/devices`);
  await phone.waitForURL(`${base}/login`);
  await shot(phone, '5-phone-sent-to-login');
  await laptop.goto(`${base}/`);
  if (!(await laptop.content()).includes(`logged in as ${user}`)) fail('the laptop was logged out too');
  console.log(`browser-e2e: two Chromium profiles logged in, listed, a cross-site post refused, the other device logged out; screenshots in ${artifacts}`);
} finally {
  attacker.close();
  await browser.close();
}
