-- Code generation and import: patterns, charsets, check characters, feasibility, uniqueness.
-- Generated codes are random, so the output shows their shape, never the codes themselves.

\c - regress_op
SELECT voucher.create_tenant('codes a') AS tenant_a \gset
SELECT voucher.create_tenant('codes b') AS tenant_b \gset
SELECT voucher.create_api_key('admin', tenant => :'tenant_a') AS a_admin \gset
SELECT voucher.create_api_key('manager', tenant => :'tenant_a') AS a_manager \gset
SELECT voucher.create_api_key('redeemer', tenant => :'tenant_a') AS a_redeemer \gset
SELECT voucher.create_api_key('admin', tenant => :'tenant_b') AS b_admin \gset

\c - regress_client
------------------------------------------------------------------------------------------------
-- normalize_code: upper case, no spaces or dashes (typographic dashes too)
------------------------------------------------------------------------------------------------
SELECT c AS input, voucher.normalize_code(c) AS canonical
  FROM unnest(ARRAY['abcd-efgh', ' ab cd-EF gh ', E'ab\tcd', 'ab–cd—ef', 'A-1-b-2', '---', '', 'ÄÖ-x']) c;
SELECT voucher.normalize_code(NULL) IS NULL AS null_in_null_out;

------------------------------------------------------------------------------------------------
-- preview_codes: pure, needs no context, inserts nothing
------------------------------------------------------------------------------------------------
SELECT count(*) AS n, bool_and(c ~ '^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}$') AS default_shape,
       count(DISTINCT c) AS distinct_codes
  FROM voucher.preview_codes(1000) c;
SELECT cs AS charset, bool_and(c ~ re) AS shape_ok, count(DISTINCT c) AS distinct_codes
  FROM (VALUES ('numbers', '^[0-9]{12}$'), ('alphabetic', '^[A-Z]{12}$'),
               ('alphanumeric', '^[0-9A-Z]{12}$'), ('unambiguous', '^[2-9A-HJKMNP-Z]{12}$'),
               ('XY', '^[XY]{12}$'), ('AAB+', '^[AB+]{12}$')) v(cs, re),
       LATERAL voucher.preview_codes(20, '############', cs) c
 GROUP BY cs ORDER BY cs;
-- literals, separators, prefix and postfix; separators survive in the display form
SELECT bool_and(c ~ '^SUMMER-[0-9]{4}-x[0-9]{2}-26$') AS display_form,
       bool_and(voucher.normalize_code(c) ~ '^SUMMER[0-9]{4}X[0-9]{2}26$') AS canonical_form
  FROM voucher.preview_codes(50, '####-x##', 'numbers', 'SUMMER-', '-26') c;
-- a check character follows the pattern
SELECT bool_and(c ~ '^[0-9]{4}-[0-9]{5}$') AS check_char_appended
  FROM voucher.preview_codes(50, '####-####', 'numbers', check_char => true) c;
-- a pattern without # makes exactly one code
SELECT * FROM voucher.preview_codes(1, 'WELCOME');
-- bad arguments: 22023 / 22004, or VC011 when the space is too small
SELECT v.args, try('SELECT * FROM voucher.preview_codes(' || v.args || ')') AS outcome
  FROM (VALUES ('0'), ('-5'), ('10000001'), ('NULL'), ('1, NULL'), ('1, ''''')
             , ('1, ''---''')
             , ('1, ' || quote_literal(repeat('#', 65)))
             , ('1, ''##é#''')
             , ('1, ''####'', ''abc''')
             , ('1, ''####'', ''A''')
             , ('1, ''####'', ''AB-''')
             , ('1, ''####'', ''unambiguous'', ' || quote_literal(repeat('P', 33)))
             , ('1, ''####'', ''alphabetic'', check_char => true')
             , ('2, ''WELCOME''')
             , ('100, ''##''')
             , ('2, ''#'', ''numbers''')) v(args);

------------------------------------------------------------------------------------------------
-- Campaign code settings and generate_codes
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'a_manager') IS NOT NULL AS ok;
SELECT voucher.create_campaign('default codes') AS c_default \gset
SELECT voucher.create_campaign('styled', code_pattern => '##-##-##', code_charset => 'numbers',
                               code_prefix => 'Sale-', code_postfix => '-X', code_check_char => true) AS c_styled \gset
SELECT voucher.create_campaign('fixed', code_pattern => 'WELCOME2026') AS c_fixed \gset
SELECT voucher.generate_codes(:'c_default', 500) AS generated;
SELECT voucher.generate_codes(:'c_styled', 50) AS generated;
SELECT voucher.generate_codes(:'c_fixed', 1) AS generated;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'a_manager') IS NOT NULL AS ok;
SELECT campaign, count(*) AS n, count(DISTINCT canonical_code) AS distinct_codes,
       bool_and(CASE campaign
                WHEN 'default codes' THEN code ~ '^[2-9A-HJKMNP-Z]{8}$' AND code = canonical_code
                WHEN 'styled' THEN code ~ '^Sale-[0-9]{2}-[0-9]{2}-[0-9]{3}-X$'
                                   AND canonical_code = voucher.normalize_code(code)
                WHEN 'fixed' THEN code = 'WELCOME2026' END) AS shape_ok,
       min(remaining_uses) AS remaining_uses
  FROM voucher.vouchers GROUP BY campaign ORDER BY campaign;
SELECT name, code_pattern, code_charset, code_prefix, code_postfix, code_check_char, vouchers
  FROM voucher.campaigns ORDER BY name;
COMMIT;

-- every error of generate_codes, each leaving nothing behind
BEGIN;
SELECT voucher.authenticate(:'a_manager') IS NOT NULL AS ok;
SELECT try(format('SELECT voucher.generate_codes(%L, %s)', :'c_default', n)) AS count_check
  FROM unnest(ARRAY['0', '-1', '10000001', 'NULL']) n;
SELECT try('SELECT voucher.generate_codes(NULL, 5)') AS null_campaign,
       try(format('SELECT voucher.generate_codes(%L, 5)', '00000000-0000-0000-0000-000000000000')) AS unknown_campaign;
-- the fixed pattern's one code exists: a second is infeasible
SELECT try(format('SELECT voucher.generate_codes(%L, 1)', :'c_fixed')) AS fixed_again;
-- 10% of 31^2 = 96 codes may exist for '##'
SELECT voucher.create_campaign('tiny', code_pattern => '##') AS c_tiny \gset
SELECT voucher.generate_codes(:'c_tiny', 90) AS generated;
SELECT voucher.generate_codes(:'c_tiny', 7) AS past_the_fill_limit;
ROLLBACK;
BEGIN;
SELECT voucher.authenticate(:'a_manager') IS NOT NULL AS ok;
SELECT voucher.create_campaign('tiny', code_pattern => '##') AS c_tiny \gset
SELECT voucher.generate_codes(:'c_tiny', 90) AS generated;
SELECT voucher.generate_codes(:'c_tiny', 6) AS up_to_the_limit;
-- another campaign of the same shape shares the space
SELECT voucher.create_campaign('tiny too', code_pattern => '##') AS c_tiny2 \gset
SELECT try(format('SELECT voucher.generate_codes(%L, 1)', :'c_tiny2')) AS shared_space;
SELECT count(*) AS tiny_codes, count(DISTINCT canonical_code) AS distinct_codes
  FROM voucher.vouchers WHERE campaign = 'tiny';
COMMIT;

-- bad code settings on create_campaign: 22023, no campaign created
BEGIN;
SELECT voucher.authenticate(:'a_manager') IS NOT NULL AS ok;
SELECT v.args, try('SELECT voucher.create_campaign(''bad'', ' || v.args || ')') AS outcome
  FROM (VALUES ('code_pattern => ''''')
             , ('code_pattern => ''- -''')
             , ('code_pattern => ' || quote_literal(repeat('#', 65)))
             , ('code_pattern => ''#é#''')
             , ('code_charset => ''ab''')
             , ('code_charset => ''Z''')
             , ('code_prefix => ' || quote_literal(repeat('P', 33)))
             , ('code_postfix => E''\n''')
             , ('code_charset => ''alphabetic'', code_check_char => true')) v(args);
SELECT count(*) AS bad_campaigns FROM voucher.campaigns WHERE name = 'bad';
COMMIT;

------------------------------------------------------------------------------------------------
-- add_code: import a caller's code
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'a_manager') IS NOT NULL AS ok;
SELECT voucher.add_code(:'c_default', 'legacy-code 7') IS NOT NULL AS imported;
SELECT code, canonical_code FROM voucher.vouchers WHERE canonical_code = 'LEGACYCODE7';
SELECT try(format('SELECT voucher.add_code(%L, %L)', :'c_default', c)) AS outcome
  FROM unnest(ARRAY['LEGACYCODE7', 'Legacy-Code-7', '', ' - ', repeat('X', 101), 'CAFÉ', E'A\u0001B']) c;
SELECT try(format('SELECT voucher.add_code(%L, NULL)', :'c_default')) AS null_code,
       try(format('SELECT voucher.add_code(NULL, %L)', 'X1')) AS null_campaign,
       try(format('SELECT voucher.add_code(%L, %L)', '00000000-0000-0000-0000-000000000000', 'X1')) AS unknown_campaign;
-- a generated code cannot be imported again
SELECT try(format('SELECT voucher.add_code(%L, %L)', :'c_default', lower(code))) AS generated_code_again
  FROM voucher.vouchers WHERE campaign = 'default codes' AND canonical_code <> 'LEGACYCODE7' LIMIT 1;
COMMIT;

------------------------------------------------------------------------------------------------
-- Tenants: the same code string in two tenants; another tenant's campaign does not exist
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'b_admin') IS NOT NULL AS ok;
SELECT voucher.create_campaign('b campaign') AS c_b \gset
SELECT voucher.add_code(:'c_b', 'LEGACY-CODE-7') IS NOT NULL AS same_code_in_b;
SELECT voucher.add_code(:'c_b', 'WELCOME2026') IS NOT NULL AS same_fixed_code_in_b;
SELECT try(format('SELECT voucher.generate_codes(%L, 5)', :'c_default')) AS a_campaign_from_b,
       try(format('SELECT voucher.add_code(%L, %L)', :'c_default', 'PLANTED')) AS plant_in_a;
SELECT count(*) AS b_vouchers FROM voucher.vouchers;
COMMIT;

-- key roles: a redeemer may not create campaigns or codes; preview needs nothing
BEGIN;
SELECT voucher.authenticate(:'a_redeemer') IS NOT NULL AS ok;
SELECT try($$SELECT voucher.create_campaign('x')$$) AS create_campaign,
       try(format('SELECT voucher.generate_codes(%L, 1)', :'c_default')) AS generate,
       try(format('SELECT voucher.add_code(%L, %L)', :'c_default', 'R1')) AS add,
       try('SELECT * FROM voucher.preview_codes(3)') AS preview;
COMMIT;
SELECT try(format('SELECT voucher.generate_codes(%L, 1)', :'c_default')) AS without_context;

\c - postgres
SELECT t.name AS tenant, count(*) AS codes
  FROM voucher.code c JOIN voucher.tenant t USING (tenant_id)
 WHERE t.name LIKE 'codes %' GROUP BY t.name ORDER BY 1;
SELECT count(*) AS planted FROM voucher.code WHERE code = 'PLANTED';

-- voucher.code has no foreign key to voucher.campaign (issue 17); triggers keep the same integrity
-- against direct DML: a campaign that codes name cannot be deleted, re-keyed or truncated away,
-- and a code cannot be re-pointed at a campaign that does not exist (rolled back)
BEGIN;
SELECT c.tenant_id AS t_a, c.campaign_id AS used_campaign
  FROM voucher.campaign c JOIN voucher.tenant t USING (tenant_id)
 WHERE t.name = 'codes a' AND c.campaign_id = :'c_default' \gset
SELECT c.campaign_id AS other_campaign FROM voucher.campaign c
 WHERE c.tenant_id = :'t_a' AND c.campaign_id <> :'used_campaign'
 ORDER BY c.created_at, c.campaign_id LIMIT 1 \gset
SELECT v.voucher_id AS a_voucher FROM voucher.code v
 WHERE v.tenant_id = :'t_a' AND v.campaign_id = :'used_campaign' ORDER BY v.code LIMIT 1 \gset
SELECT try(format('DELETE FROM voucher.campaign WHERE tenant_id = %L AND campaign_id = %L',
                  :'t_a', :'used_campaign')) AS delete_used_campaign,
       try(format('UPDATE voucher.campaign SET campaign_id = gen_random_uuid() WHERE tenant_id = %L AND campaign_id = %L',
                  :'t_a', :'used_campaign')) AS rekey_used_campaign,
       try(format('UPDATE voucher.campaign SET name = name WHERE tenant_id = %L AND campaign_id = %L',
                  :'t_a', :'used_campaign')) AS other_update;
SELECT try(format('UPDATE voucher.code SET campaign_id = gen_random_uuid() WHERE tenant_id = %L AND voucher_id = %L',
                  :'t_a', :'a_voucher')) AS repoint_to_no_campaign,
       try(format('UPDATE voucher.code SET tenant_id = gen_random_uuid() WHERE tenant_id = %L AND voucher_id = %L',
                  :'t_a', :'a_voucher')) AS move_to_no_tenant,
       try(format('UPDATE voucher.code SET campaign_id = %L WHERE tenant_id = %L AND voucher_id = %L',
                  :'other_campaign', :'t_a', :'a_voucher')) AS repoint_to_a_campaign;
-- the counters' checks are domains (issue 17): below zero is still refused, also by direct DML
SELECT try(format('UPDATE voucher.code SET redeemed_count = -1 WHERE tenant_id = %L AND voucher_id = %L',
                  :'t_a', :'a_voucher')) AS negative_count,
       try(format('UPDATE voucher.code SET balance = -0.01 WHERE tenant_id = %L AND voucher_id = %L',
                  :'t_a', :'a_voucher')) AS negative_balance,
       try(format('UPDATE voucher.code SET redeemed_count = redeemed_count + 1, balance = 0 '
                  'WHERE tenant_id = %L AND voucher_id = %L', :'t_a', :'a_voucher')) AS zero_balance;
-- without its codes, a campaign goes; a truncate must take the codes with it
SELECT try(format('DELETE FROM voucher.code WHERE tenant_id = %L AND campaign_id = %L',
                  :'t_a', :'used_campaign')) AS delete_its_codes,
       try(format('DELETE FROM voucher.campaign WHERE tenant_id = %L AND campaign_id = %L',
                  :'t_a', :'used_campaign')) AS delete_campaign_without_codes;
SELECT try('TRUNCATE voucher.campaign CASCADE') AS truncate_campaigns,
       try('TRUNCATE voucher.campaign, voucher.code CASCADE') AS truncate_with_codes;
ROLLBACK;
SELECT count(*) > 0 AS codes_still_there FROM voucher.code WHERE campaign_id = :'c_default';
