-- GDPR rights inside the database (src/privacy/, README "GDPR"): consent with its history, the
-- export of everything held about a customer, forgetting a customer, and retention of inactive
-- customers' profiles.

-- A forgotten customer keeps its row in voucher.customer (customer_id is the pseudonymous id its
-- redemptions, limits and statistics still count under), with forgotten_at set, its personal
-- fields NULL, its source_id a pseudonym and its own key (voucher.customer.audit_key) destroyed.

-- Every consent change, never updated: the current state is the latest row per customer and
-- purpose. Removed only when the customer is forgotten.
CREATE TABLE voucher.consent (
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    consent_id   uuid        NOT NULL,   -- uuid v7: time order
    purpose      text        NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_.:-]{0,62}$'),
    granted      boolean     NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    source       text        CHECK (length(source) <= 200),
    recorded_by  text        NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, consent_id)
    -- no foreign key to voucher.customer: see _consent_keep_refs below
);
COMMENT ON TABLE voucher.consent IS
    'Consent grants and withdrawals per customer and purpose, with time, key and source; history kept.';
SELECT voucher._isolate_tenant('voucher.consent');
-- No foreign key to voucher.customer (a parallel pg_restore ignores the keys' order among an
-- extension's tables, see sql/tenancy.sql). What the key did for direct DML (the extension never
-- deletes a customer: forget_customer keeps the row) is done here: deleting a customer deletes
-- its consents (ON DELETE CASCADE, as the key did), re-keying a customer that consents name or
-- truncating voucher.customer while consents exist is refused (23503, 0A000), and so is
-- re-pointing a consent at a customer that does not exist. Inserts are not checked (a restore
-- inserts in any order): set_consent, the only writer, holds the customer's row lock. Sees
-- every tenant's rows and stays the extension owner's, like the other *_keep_refs
-- (sql/finalize.sql).
CREATE FUNCTION voucher._consent_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: consents truncated in the same statement are gone by now
        IF EXISTS (SELECT FROM voucher.consent) THEN
            RAISE EXCEPTION 'cannot truncate voucher.customer while voucher.consent names its rows'
                USING ERRCODE = '0A000', HINT = 'truncate voucher.consent in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME = 'consent' THEN
        IF NOT EXISTS (SELECT FROM voucher.customer c WHERE c.tenant_id = NEW.tenant_id
                          AND c.customer_id = NEW.customer_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.consent: no such customer' USING ERRCODE = '23503';
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM voucher.consent c
         WHERE c.tenant_id = OLD.tenant_id AND c.customer_id = OLD.customer_id;
    ELSIF EXISTS (SELECT FROM voucher.consent c
                   WHERE c.tenant_id = OLD.tenant_id AND c.customer_id = OLD.customer_id) THEN
        RAISE EXCEPTION 'voucher.customer: consents name this customer' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_consent AFTER DELETE ON voucher.customer
    FOR EACH ROW EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER keep_consent_rekey AFTER UPDATE OF tenant_id, customer_id ON voucher.customer
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER keep_consent_truncate AFTER TRUNCATE ON voucher.customer
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER keep_customer AFTER UPDATE OF tenant_id, customer_id ON voucher.consent
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.consent FOR EACH ROW
    WHEN (NOT voucher._by_definer()) EXECUTE FUNCTION voucher._audit_direct_dml();
CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.consent
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_direct_truncate();

-- A customer's redemptions, for export, forget and retention (which would otherwise scan the
-- tenant's redemptions once per customer).
CREATE INDEX redemption_customer_idx ON voucher.redemption (tenant_id, customer_id, redeemed_at)
    WHERE customer_id IS NOT NULL;
-- Failed redemptions that name a customer (the only audit rows that do without its id as their
-- object): export and forget find them without scanning the log. Only failures pay for it.
-- The key is a LEAKPROOF function (it cannot raise: -> and ->> on jsonb return NULL for what is
-- absent), so the index serves our functions, which run under row-level security, where a
-- non-leakproof jsonb operator would have to wait behind the policy as a filter.
CREATE FUNCTION voucher._audit_customer(details jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT LEAKPROOF PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN details -> 'customer' ->> 'customer_id';
END
$$;
CREATE INDEX audit_event_failed_customer_idx
    ON voucher.audit_event (tenant_id, voucher._audit_customer(details))
    WHERE action = 'redemption.failed';

------------------------------------------------------------------------------------------------
-- Tenant settings this capability reads (registered in src/settings/registry.rs, set with
-- voucher.configure): require_profile_consent (false) and customer_retention_days (0 = off).
------------------------------------------------------------------------------------------------
CREATE FUNCTION voucher._privacy_setting(t uuid, setting text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    v text;
BEGIN
    SELECT s.value INTO v FROM voucher.tenant_setting s
     WHERE s.tenant_id = t AND s.setting = _privacy_setting.setting;
    RETURN coalesce(v, CASE _privacy_setting.setting WHEN 'require_profile_consent' THEN 'false'
                                                     WHEN 'customer_retention_days' THEN '0' END);
END
$$;

------------------------------------------------------------------------------------------------
-- Storage-specific steps (the only functions that know how a customer's fields are stored)
------------------------------------------------------------------------------------------------

-- voucher._customer_by_source(t, source_id) (src/privacy/keys.rs): the live (not forgotten)
-- customer with this source_id, found through its blind index, or NULL.

-- The customer's profile as the person would read it.
-- (scale: the row is read first and decrypted in a statement of its own, which reads no table:
-- on a Citus cluster a look-up goes to the customer's shard with the functions of its target
-- list, and only the coordinator can decrypt)
CREATE FUNCTION voucher._customer_profile(t uuid, id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    c record;
BEGIN
    SELECT x.customer_id, x.source_id, x.email, x.name, x.metadata, x.created_at, x.updated_at
      INTO c FROM voucher.customer x WHERE x.tenant_id = t AND x.customer_id = id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object(
               'customer_id', c.customer_id,
               'source_id', voucher._decrypt('customer', 'source_id', c.customer_id, c.source_id),
               'email', voucher._decrypt('customer', 'email', c.customer_id, c.email),
               'name', voucher._decrypt('customer', 'name', c.customer_id, c.name),
               'metadata', coalesce(voucher._decrypt('customer', 'metadata', c.customer_id,
                                                     c.metadata)::jsonb, '{}'),
               'created_at', c.created_at, 'updated_at', c.updated_at);
END
$$;

-- Erases email, name and metadata (ciphertexts and the email's blind index); returns the names
-- of the fields that were stored.
CREATE FUNCTION voucher._erase_profile(t uuid, id uuid) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    old record;
BEGIN
    SELECT c.email IS NOT NULL AS email, c.name IS NOT NULL AS name,
           c.metadata IS NOT NULL AS metadata INTO old
      FROM voucher.customer c WHERE c.tenant_id = t AND c.customer_id = id FOR NO KEY UPDATE;
    IF NOT (old.email OR old.name OR old.metadata) THEN
        RETURN '{}';
    END IF;
    UPDATE voucher.customer c
       SET email = NULL, email_index = NULL, name = NULL, metadata = NULL, updated_at = now()
     WHERE c.tenant_id = t AND c.customer_id = id;
    RETURN array_remove(ARRAY[CASE WHEN old.email THEN 'email' END,
                              CASE WHEN old.name THEN 'name' END,
                              CASE WHEN old.metadata THEN 'metadata' END], NULL);
END
$$;

-- voucher._pseudonymize(t, id) (src/privacy/keys.rs): the source_id replaced by an encrypted
-- pseudonym and its blind index by random bytes, the profile fields NULL, forgotten_at set, and
-- the customer's own key destroyed.

-- The audit events that concern the customer: its own (created, changed, consents, exported),
-- its redemptions and their rollbacks, and failed redemptions that named it. Each kind is found
-- through an index (object, or the failed-customer index), never by scanning the log: a
-- customer's redemption events in one pass over the events of each of its vouchers (OFFSET 0
-- keeps the planner from flattening the LATERAL probes into a scan of every voucher's events).
-- PL/pgSQL, so its plan is kept (a SQL function with SET would be planned on every call).
CREATE FUNCTION voucher._customer_events(t uuid, id uuid)
RETURNS SETOF voucher.audit_event
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    idt text := id::text;
BEGIN
    RETURN QUERY
    -- the ids as text up front: a uuid::text cast inside a qual is not leakproof, so under
    -- row-level security it could not be an index condition
    WITH r AS MATERIALIZED (SELECT x.redemption_id::text AS rid, x.voucher_id::text AS vid
                              FROM voucher.redemption x
                             WHERE x.tenant_id = t AND x.customer_id = id)
    SELECT e.* FROM voucher.audit_event e
     WHERE e.tenant_id = t AND e.object_type = 'customer' AND e.object_id = idt
    UNION ALL
    SELECT e.* FROM (SELECT DISTINCT r.vid FROM r) v
     CROSS JOIN LATERAL (SELECT e.* FROM voucher.audit_event e
                          WHERE e.tenant_id = t AND e.object_type = 'voucher'
                            AND e.object_id = v.vid
                            AND e.action = 'redemption.created' OFFSET 0) e
     WHERE e.details ->> 'redemption_id' IN (SELECT r.rid FROM r)
    UNION ALL
    SELECT e.* FROM r
     CROSS JOIN LATERAL (SELECT e.* FROM voucher.audit_event e
                          WHERE e.tenant_id = t AND e.object_type = 'redemption'
                            AND e.object_id = r.rid OFFSET 0) e
    UNION ALL
    SELECT e.* FROM voucher.audit_event e
     WHERE e.tenant_id = t AND e.action = 'redemption.failed'
       AND voucher._audit_customer(e.details) = idt;
END
$$;

------------------------------------------------------------------------------------------------
-- Consent
------------------------------------------------------------------------------------------------

-- May this customer's profile hold personal fields? Always, unless the tenant requires the
-- 'profile' consent; then only when it is granted. id NULL: a customer not created yet.
CREATE FUNCTION voucher._profile_allowed(t uuid, id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
BEGIN
    -- (scale) two statements: on a Citus cluster the consent look-up goes to the customer's
    -- shard, which must not be asked to read the settings itself
    IF voucher._privacy_setting(t, 'require_profile_consent') <> 'true' THEN
        RETURN true;
    END IF;
    RETURN coalesce((SELECT c.granted FROM voucher.consent c
                      WHERE c.tenant_id = t AND c.customer_id = id AND c.purpose = 'profile'
                      ORDER BY c.consent_id DESC LIMIT 1), false);
END
$$;

CREATE FUNCTION voucher.set_consent(
    customer  text,
    purpose   text,
    granted   boolean,
    source    text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t       uuid := voucher._authorize('write_customers');
    id      uuid;
    before  boolean;
    erased  text[] := '{}';
BEGIN
    IF customer IS NULL OR purpose IS NULL OR granted IS NULL THEN
        RAISE EXCEPTION 'customer, purpose and granted must not be NULL' USING ERRCODE = '22004';
    ELSIF purpose !~ '^[a-z][a-z0-9_.:-]{0,62}$' THEN
        RAISE EXCEPTION 'purpose must be a lower-case word of at most 63 characters'
            USING ERRCODE = '22023', HINT = 'for example ''profile'' or ''newsletter''';
    ELSIF length(source) > 200 THEN
        RAISE EXCEPTION 'source is longer than 200 characters' USING ERRCODE = '22023';
    END IF;
    -- finds or creates the customer (and checks the id); then one change at a time per customer
    id := voucher.upsert_customer(customer);
    PERFORM 1 FROM voucher.customer c WHERE c.tenant_id = t AND c.customer_id = id FOR NO KEY UPDATE;
    SELECT c.granted INTO before FROM voucher.consent c
     WHERE c.tenant_id = t AND c.customer_id = id AND c.purpose = set_consent.purpose
     ORDER BY c.consent_id DESC LIMIT 1;
    INSERT INTO voucher.consent (tenant_id, customer_id, consent_id, purpose, granted, source,
                                 recorded_by)
    VALUES (t, id, voucher._uuid_v7(), purpose, granted, source, voucher._actor_label());
    -- withdrawing the profile consent erases the profile (the id and redemptions stay)
    IF purpose = 'profile' AND NOT granted THEN
        erased := voucher._erase_profile(t, id);
    END IF;
    PERFORM voucher._audit(CASE WHEN granted THEN 'consent.granted' ELSE 'consent.withdrawn' END,
                           'customer', id::text,
                           jsonb_build_object('purpose', purpose, 'source', source,
                                              'before', before, 'erased', to_jsonb(erased)));
END
$$;
COMMENT ON FUNCTION voucher.set_consent(text, text, boolean, text) IS
    'Records a consent grant or withdrawal; withdrawing ''profile'' erases email, name and metadata.';

CREATE VIEW voucher.consents WITH (security_barrier) AS
SELECT DISTINCT ON (c.customer_id, c.purpose) c.customer_id, c.purpose, c.granted, c.at, c.source
  FROM voucher.consent c
 WHERE voucher._can_read('read_customers')
 ORDER BY c.customer_id, c.purpose, c.consent_id DESC;
COMMENT ON VIEW voucher.consents IS 'The current consent per customer and purpose.';

------------------------------------------------------------------------------------------------
-- Know: export
------------------------------------------------------------------------------------------------
-- Exporting reads (action export_customers, admin keys only), so it also runs on a hot standby
-- (or in a READ ONLY transaction), where its audit row cannot be written: there it exports
-- without an audit row ("audited": false in the document; src/privacy/standby.rs logs tenant and
-- key, not who), unless the caller passes allow_unaudited => false: then it refuses with 25006.
CREATE FUNCTION voucher.export_customer(source_id text, allow_unaudited boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t         uuid := voucher._authorize('export_customers');
    audited   boolean := current_setting('transaction_read_only') = 'off';
    id        uuid;
    consents  jsonb;
    reds      jsonb;
    events    jsonb;
BEGIN
    IF source_id IS NULL THEN
        RAISE EXCEPTION 'source_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT audited AND NOT coalesce(allow_unaudited, true) THEN
        RAISE EXCEPTION 'cannot audit a customer export %',
              CASE WHEN pg_is_in_recovery() THEN 'on a hot standby' ELSE 'in a read-only transaction' END
            USING ERRCODE = '25006',
                  HINT = 'run export_customer on the primary (in a read-write transaction), or leave '
                         'allow_unaudited at true to export here without an audit row';
    END IF;
    id := voucher._customer_by_source(t, source_id);
    IF id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(jsonb_agg(x.doc ORDER BY x.purpose), '[]') INTO consents
      FROM (SELECT c.purpose,
                   jsonb_build_object(
                       'purpose', c.purpose,
                       'granted', (array_agg(c.granted ORDER BY c.consent_id DESC))[1],
                       'history', jsonb_agg(jsonb_build_object('granted', c.granted, 'at', c.at,
                                                               'source', c.source,
                                                               'recorded_by', c.recorded_by)
                                            ORDER BY c.consent_id)) AS doc
              FROM voucher.consent c WHERE c.tenant_id = t AND c.customer_id = id
             GROUP BY c.purpose) x;
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'redemption_id', r.redemption_id, 'code', coalesce(v.display, v.code),
               'campaign_id', r.campaign_id, 'campaign', ca.name, 'order_id', r.order_id,
               'order_amount', r.order_amount, 'amount', r.amount, 'discount', r.discount,
               'balance_after', r.balance_after,
               'metadata', encode(r.metadata, 'hex'),   -- decrypted below
               'redeemed_at', r.redeemed_at,
               'status', CASE WHEN r.rolled_back_at IS NULL THEN 'redeemed' ELSE 'rolled back' END,
               'rolled_back_at', r.rolled_back_at, 'rollback_reason', r.rollback_reason)
             ORDER BY r.redeemed_at, r.redemption_id), '[]') INTO reds
      FROM voucher.redemption r
      JOIN voucher.code v ON v.tenant_id = r.tenant_id AND v.voucher_id = r.voucher_id
      JOIN voucher.campaign ca ON ca.tenant_id = r.tenant_id AND ca.campaign_id = r.campaign_id
     WHERE r.tenant_id = t AND r.customer_id = id;
    -- (scale) the metadata decrypted in a statement that reads no table: on a Citus cluster the
    -- one above runs on the customer's shard, and only the coordinator can decrypt
    SELECT coalesce(jsonb_agg(x.e || jsonb_build_object('metadata',
               voucher._decrypt('redemption', 'metadata', (x.e ->> 'redemption_id')::uuid,
                                decode(x.e ->> 'metadata', 'hex'))::jsonb) ORDER BY x.n), '[]')
      INTO reds FROM jsonb_array_elements(reds) WITH ORDINALITY x(e, n);
    -- what an audit row holds about the customer under its own key, decrypted
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'event_id', e.event_id, 'at', e.at, 'action', e.action,
               'object_type', e.object_type, 'object_id', e.object_id,
               'details', CASE WHEN e.details -> 'customer' ? 'personal'
                               THEN jsonb_set(e.details, '{customer,personal}',
                                    coalesce(voucher._open_personal(t, id,
                                                 e.details -> 'customer' ->> 'personal'), 'null'))
                               ELSE e.details END)
             ORDER BY e.event_id), '[]') INTO events
      FROM voucher._customer_events(t, id) e;
    -- the export is audited: which customer (its pseudonymous id) and how much, no contents
    IF audited THEN
        PERFORM voucher._audit('customer.exported', 'customer', id::text,
            jsonb_build_object('consents', jsonb_array_length(consents),
                               'redemptions', jsonb_array_length(reds),
                               'audit_events', jsonb_array_length(events)));
    ELSE
        PERFORM voucher._log_unaudited_export();   -- the server log: tenant and key, no customer
    END IF;
    RETURN jsonb_build_object(
        'format', 'voucher_ext.customer_export/1',
        'exported_at', now(),
        'audited', audited,
        'tenant_id', t,
        'customer', voucher._customer_profile(t, id),
        'consents', consents,
        'redemptions', reds,
        'audit_events', events);
END
$$;
COMMENT ON FUNCTION voucher.export_customer(text, boolean) IS
    'Everything the tenant holds about a customer, as one jsonb document (voucher_ext.customer_export/1).';

------------------------------------------------------------------------------------------------
-- Forget
------------------------------------------------------------------------------------------------

-- Forgets one customer of tenant t (locked by the caller): returns the counts per kind.
CREATE FUNCTION voucher._forget(t uuid, id uuid, reason text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
#variable_conflict use_variable
DECLARE
    n_red     bigint;
    n_cons    bigint;
    n_events  bigint;
    result    jsonb;
BEGIN
    SELECT count(*) INTO n_events FROM voucher._customer_events(t, id);
    -- personal data in redemptions: their metadata; the rows stay (counts, limits and
    -- statistics), under the pseudonymous customer id
    SELECT count(*) INTO n_red FROM voucher.redemption r WHERE r.tenant_id = t AND r.customer_id = id;
    UPDATE voucher.redemption r SET metadata = NULL, key_id = NULL
     WHERE r.tenant_id = t AND r.customer_id = id AND r.metadata IS NOT NULL;
    DELETE FROM voucher.consent c WHERE c.tenant_id = t AND c.customer_id = id;
    GET DIAGNOSTICS n_cons = ROW_COUNT;
    PERFORM voucher._pseudonymize(t, id);
    result := jsonb_build_object('profile', 1, 'redemptions', n_red, 'consents', n_cons,
                                 'audit_events', n_events);
    -- says that a customer was forgotten, and how much, not who
    PERFORM voucher._audit('customer.forgotten', 'customer', NULL,
                           result || jsonb_build_object('reason', reason));
    RETURN result;
END
$$;

CREATE FUNCTION voucher.forget_customer(source_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t   uuid := voucher._authorize('administer');
    id  uuid;
BEGIN
    IF source_id IS NULL THEN
        RAISE EXCEPTION 'source_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    id := voucher._customer_by_source(t, source_id);
    IF id IS NULL THEN
        RETURN NULL;
    END IF;
    -- FOR UPDATE: a redemption that looked the customer up waits, and then finds it gone
    PERFORM 1 FROM voucher.customer c
     WHERE c.tenant_id = t AND c.customer_id = id AND c.forgotten_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;   -- forgotten meanwhile
    END IF;
    RETURN voucher._forget(t, id, 'request');
END
$$;
COMMENT ON FUNCTION voucher.forget_customer(text) IS
    'Erases a customer''s personal data for good; its redemptions stay under a pseudonymous id.';

------------------------------------------------------------------------------------------------
-- Retention
------------------------------------------------------------------------------------------------

-- Forgets up to batch_size customers of tenant t without activity (profile change, redemption,
-- consent) for longer than its customer_retention_days; returns how many (0: none left, or
-- retention is off). Run by forget_inactive_customers (an admin key's own tenant) and by
-- voucher.run_customer_retention (src/privacy/retention.rs: operators, every tenant, each under
-- its own context); row-level security keeps it to the context's tenant.
CREATE FUNCTION voucher._forget_inactive(t uuid, batch_size integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    days    integer;
    cutoff  timestamptz;
    c       record;
    n       bigint := 0;
BEGIN
    days := voucher._privacy_setting(t, 'customer_retention_days')::integer;
    IF days = 0 THEN
        RETURN 0;
    END IF;
    cutoff := now() - make_interval(days => days);
    FOR c IN
        SELECT cu.customer_id FROM voucher.customer cu
         WHERE cu.tenant_id = t AND cu.forgotten_at IS NULL AND cu.updated_at < cutoff
           AND NOT EXISTS (SELECT 1 FROM voucher.redemption r
                            WHERE r.tenant_id = t AND r.customer_id = cu.customer_id
                              AND r.redeemed_at >= cutoff)
           AND NOT EXISTS (SELECT 1 FROM voucher.consent k
                            WHERE k.tenant_id = t AND k.customer_id = cu.customer_id
                              AND k.at >= cutoff)
         ORDER BY cu.updated_at
         LIMIT batch_size
           FOR UPDATE OF cu SKIP LOCKED
    LOOP
        PERFORM voucher._forget(t, c.customer_id, 'retention');
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- An admin key: one batch of its own tenant. Call it until it returns 0, e.g. every few minutes
-- from a scheduler; for every tenant at once see voucher.run_customer_retention (operators).
CREATE FUNCTION voucher.forget_inactive_customers(batch_size integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    t  uuid := voucher._authorize('administer');
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 100000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    RETURN voucher._forget_inactive(t, batch_size);
END
$$;
COMMENT ON FUNCTION voucher.forget_inactive_customers(integer) IS
    'Forgets a batch of customers inactive for longer than the tenant''s customer_retention_days.';
