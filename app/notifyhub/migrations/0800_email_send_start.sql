-- The user-email send in two statements (notifyhub/messaging/user_email.py): this function
-- takes the shared consent lock, reads the recipient and claims the effect-ledger key in one
-- round trip; one more statement settles the ledger, writes the delivery log and releases
-- the lock after the provider call.

-- What email_send_start returns: the columns of the recipient query in
-- messaging/recipients.py (_USER_SQL), then the ledger key and what claiming it found.
CREATE TYPE email_send_start AS (
    id                bigint,
    name              text,
    email             text,
    phone             text,
    time_zone         text,
    locale            text,
    country_code      text,
    quiet_hours_start time,
    quiet_hours_end   time,
    sms_in            timestamptz,
    sms_out           timestamptz,
    email_in          timestamptz,
    email_out         timestamptz,
    sms_suppressed    boolean,
    email_suppressed  boolean,
    push_in           timestamptz,
    push_out          timestamptz,
    push_devices      text[],
    idempotency_key   text,
    -- 'owned': this attempt may call the provider; 'sent' / 'maybe_sent': an earlier attempt
    -- settled it, nothing is sent; NULL: no key (no address, or one that is not plain ASCII,
    -- whose key only the application computes).
    claim             text
);

-- Takes the user's shared email consent lock as a session lock (the caller releases it after
-- the provider answered, or the pool's reset query does when anything failed), then reads the
-- user and claims the ledger key of (job, 'email', template, address). The read is a statement
-- of its own after the lock: each statement of a volatile function sees what was committed
-- when it started, so an opt-out committed while this waited for the lock is seen.
-- Returns NULL (every column NULL) for an unknown user, and releases the lock itself then
-- and when the claim finds the message already settled: nothing will be sent.
CREATE FUNCTION email_send_start(
    p_user_id    bigint,
    p_job_id     text,
    p_template   text,
    p_lock_class integer,
    p_lock_key   integer
) RETURNS email_send_start
LANGUAGE plpgsql AS $$
DECLARE
    r email_send_start;
BEGIN
    PERFORM pg_advisory_lock_shared(p_lock_class, p_lock_key);
    WITH u AS (
        SELECT u.id, u.name, u.email, u.phone::text AS phone, u.time_zone, u.locale,
               u.country_code, u.quiet_hours_start, u.quiet_hours_end,
               sc.opted_in_at AS sms_in, sc.opted_out_at AS sms_out,
               ec.opted_in_at AS email_in, ec.opted_out_at AS email_out,
               EXISTS (SELECT 1 FROM suppressions s
                       WHERE s.channel = 'sms' AND s.recipient = u.phone) AS sms_suppressed,
               EXISTS (SELECT 1 FROM suppressions s
                       WHERE s.channel = 'email' AND s.recipient = lower(u.email))
                   AS email_suppressed,
               pc.opted_in_at AS push_in, pc.opted_out_at AS push_out,
               ARRAY(SELECT ARRAY[d.platform, d.token] FROM push_devices d
                     WHERE d.user_id = u.id ORDER BY d.id) AS push_devices,
               -- sha256 of the address as ledger.recipient_hash computes it (strip, lower):
               -- for printable ASCII without spaces that is lower() under the C collation.
               CASE WHEN u.email ~ '^[!-~]+$' THEN
                   encode(sha256(convert_to(lower(u.email COLLATE "C"), 'UTF8')), 'hex')
               END AS recipient_hash
        FROM users u
        LEFT JOIN consents sc ON sc.user_id = u.id AND sc.channel = 'sms'
        LEFT JOIN consents ec ON ec.user_id = u.id AND ec.channel = 'email'
        LEFT JOIN consents pc ON pc.user_id = u.id AND pc.channel = 'push'
        WHERE u.id = p_user_id
    ), k AS (
        SELECT 'qr-' || p_job_id || '-email-' || p_template || '-'
                   || left(u.recipient_hash, 20) AS key,
               u.recipient_hash
        FROM u WHERE u.recipient_hash IS NOT NULL
    ), claimed AS (
        -- As Ledger.claim does for email: a new key, or one left pending or failed by an
        -- earlier attempt (the provider deduplicates a repeat of the same key), is taken.
        INSERT INTO effect_ledger AS l (idempotency_key, job_id, channel, recipient_hash,
                                        template)
        SELECT k.key, p_job_id, 'email', k.recipient_hash, p_template FROM k
        ON CONFLICT (idempotency_key) DO UPDATE
            SET state = 'pending', updated_at = clock_timestamp()
            WHERE l.state IN ('pending', 'failed')
        RETURNING l.idempotency_key
    )
    SELECT u.id, u.name, u.email, u.phone, u.time_zone, u.locale, u.country_code,
           u.quiet_hours_start, u.quiet_hours_end, u.sms_in, u.sms_out, u.email_in,
           u.email_out, u.sms_suppressed, u.email_suppressed, u.push_in, u.push_out,
           u.push_devices, k.key,
           CASE WHEN k.key IS NULL THEN NULL
                WHEN EXISTS (SELECT 1 FROM claimed) THEN 'owned'
                -- The row as it was before this statement: settled, so not taken.
                ELSE (SELECT l.state FROM effect_ledger l WHERE l.idempotency_key = k.key)
           END
    INTO r
    FROM u LEFT JOIN k ON true;
    IF r.id IS NULL OR r.claim IN ('sent', 'maybe_sent') THEN
        PERFORM pg_advisory_unlock_shared(p_lock_class, p_lock_key);
    END IF;
    RETURN r;
END;
$$;
