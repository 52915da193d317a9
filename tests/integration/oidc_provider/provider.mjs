// A real OpenID Connect provider for tests/integration/test_auth_oidc.py: panva's
// oidc-provider (certified), one confidential client, three accounts, the dev login
// and consent pages. Settings come from the environment; nothing here is a secret
// outside the test.
import Provider from 'oidc-provider';

const { ISSUER, PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI } = process.env;

// olivia: the directory's UID/GID in claims; oscar: none (the hub allocates them);
// cora: outside the allowed groups.
const ACCOUNTS = {
  'olivia-0001': { preferred_username: 'olivia', groups: ['analysts'], uid_number: 52001, gid_number: 52500 },
  'oscar-0002': { preferred_username: 'oscar', groups: ['analysts', 'spark-users'] },
  'cora-0003': { preferred_username: 'cora', groups: ['visitors'] },
};
// The dev login page takes any login and makes it the account ID, which is the `sub`: the
// test types olivia-0001, and the hub must key her UID by that, not by her name.

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username'],
    groups: ['groups'],
    posix: ['uid_number', 'gid_number'],
  },
  async findAccount(ctx, sub) {
    if (!ACCOUNTS[sub]) return undefined;
    return { accountId: sub, async claims() { return { sub, ...ACCOUNTS[sub] }; } };
  },
  cookies: { keys: ['hubtest-oidc-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});
// The test prints this container's log at teardown: say what went wrong.
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('authorization.error', (ctx, err) => console.error('authorization.error', err));
provider.on('grant.error', (ctx, err) => console.error('grant.error', err));
provider.listen(Number(PORT), () => console.log(`oidc-provider ${ISSUER} listening on ${PORT}`));
