-- Push notifications: the devices a user receives them on (FCM for Android, APNs for iOS).
--
-- Push consent needs no table of its own: it is the 'push' channel of consents (0001), judged
-- by the same current_consents rule as SMS and email, and the delivery log, the effect ledger
-- and the sandbox outbox already accept 'push'.

-- One row per registration token. A token identifies one app install on one device, so it is
-- unique across users: when another user signs in on the same device, registering the token
-- moves it to them (the previous user must stop getting that device's notifications).
-- A token the provider reports gone (FCM UNREGISTERED, APNs 410) is deleted by the sender.
CREATE TABLE push_devices (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform     text NOT NULL CONSTRAINT push_devices_platform CHECK (platform IN ('fcm', 'apns')),
    -- FCM tokens are ~160 characters of [A-Za-z0-9:_-], APNs tokens 64 hex digits; no
    -- whitespace either way, and a bound keeps a garbage payload out.
    token        text NOT NULL CONSTRAINT push_devices_token_shape
                     CHECK (token ~ '^[!-~]+$' AND length(token) BETWEEN 8 AND 4096),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Refreshed each time the app registers the token again (every launch, typically): a
    -- token unseen for months is likely stale even before the provider says so.
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT push_devices_token_key UNIQUE (token)
);
-- "All devices of this user" on every push send.
CREATE INDEX push_devices_user_idx ON push_devices (user_id);
