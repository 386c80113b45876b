//! jsonb objects built in place, for audit details written on the hot path.
//!
//! `jsonb_build_object` runs every key and value through its type's output function, and
//! parses each numeric back from that text (PostgreSQL 15's `datum_to_jsonb`): for a
//! redemption's nine details that was about 45k instructions per call (issue 17, callgrind).
//! [`Object`] hands the values to `pushJsonbValue` as they are (numerics by their datum,
//! strings by their bytes) and `JsonbValueToJsonb` makes the jsonb, the same two steps
//! `jsonb_build_object` ends with: the result is the same jsonb, key order and all.

use std::ffi::c_char;
use std::ptr;

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable,
};
use pgrx::{AnyNumeric, IntoDatum};

/// A jsonb datum made here (palloc'd in the current memory context), returned to SQL as is.
pub struct Jsonb(pg_sys::Datum);

impl Jsonb {
    /// The datum, for a writer that stores it itself (redeem's `direct`).
    pub fn datum(&self) -> pg_sys::Datum {
        self.0
    }
}

// SAFETY: the datum is a complete jsonb varlena (JsonbValueToJsonb), never NULL.
unsafe impl BoxRet for Jsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

// SAFETY: it is a jsonb, as declared.
unsafe impl SqlTranslatable for Jsonb {
    const TYPE_IDENT: &'static str = concat!(module_path!(), "::Jsonb");
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

/// A jsonb object under construction. Keys are `'static` (their bytes must outlive `finish`);
/// values are copied into memory of the current context where they are not already there.
pub struct Object {
    state: *mut pg_sys::JsonbParseState,
}

fn scalar(
    kind: pg_sys::jbvType::Type,
    val: pg_sys::JsonbValue__bindgen_ty_1,
) -> pg_sys::JsonbValue {
    pg_sys::JsonbValue { type_: kind, val }
}

fn string_value(ptr: *const u8, len: usize) -> pg_sys::JsonbValue {
    scalar(
        pg_sys::jbvType::jbvString,
        pg_sys::JsonbValue__bindgen_ty_1 {
            string: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
                len: len as i32,
                val: ptr as *mut c_char,
            },
        },
    )
}

fn null_value() -> pg_sys::JsonbValue {
    scalar(
        pg_sys::jbvType::jbvNull,
        pg_sys::JsonbValue__bindgen_ty_1 { boolean: false },
    )
}

/// `s` copied into the current memory context: pushJsonbValue keeps the pointer until `finish`.
fn palloc_str(s: &[u8]) -> *const u8 {
    // SAFETY: a fresh allocation of s.len() bytes (at least 1), filled from s.
    unsafe {
        let p = pg_sys::palloc(s.len().max(1)).cast::<u8>();
        ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        p
    }
}

impl Object {
    pub fn new() -> Self {
        let mut state: *mut pg_sys::JsonbParseState = ptr::null_mut();
        // SAFETY: a new parse state; BEGIN_OBJECT takes no value.
        unsafe {
            pg_sys::pushJsonbValue(
                &mut state,
                pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT,
                ptr::null_mut(),
            );
        }
        Object { state }
    }

    fn push(&mut self, key: &'static str, mut value: pg_sys::JsonbValue) {
        let mut k = string_value(key.as_ptr(), key.len());
        // SAFETY: the state is an open object; scalars are copied by value into it, and the
        // bytes they point to (static keys, palloc'd or caller-owned values) outlive `finish`.
        unsafe {
            pg_sys::pushJsonbValue(&mut self.state, pg_sys::JsonbIteratorToken::WJB_KEY, &mut k);
            pg_sys::pushJsonbValue(
                &mut self.state,
                pg_sys::JsonbIteratorToken::WJB_VALUE,
                &mut value,
            );
        }
    }

    /// A string, or null.
    pub fn text(&mut self, key: &'static str, value: Option<&str>) {
        let v = match value {
            Some(s) => string_value(palloc_str(s.as_bytes()), s.len()),
            None => null_value(),
        };
        self.push(key, v);
    }

    /// A uuid as its canonical text (what uuid_out prints), or null.
    pub fn uuid(&mut self, key: &'static str, value: Option<pgrx::Uuid>) {
        match value {
            Some(u) => {
                let s = super::uuid_text(u.as_bytes());
                self.push(key, string_value(palloc_str(s.as_bytes()), s.len()));
            }
            None => self.push(key, null_value()),
        }
    }

    /// A number, or null. NaN and the infinities, which JSON has no number for, become their
    /// text, as `jsonb_build_object` makes them.
    pub fn numeric(&mut self, key: &'static str, value: Option<AnyNumeric>) {
        let Some(n) = value else {
            self.push(key, null_value());
            return;
        };
        // a palloc'd copy of the numeric varlena (4-byte header), what jsonb stores
        let datum = n.into_datum().expect("a numeric datum");
        let num: pg_sys::Numeric = datum.cast_mut_ptr();
        // SAFETY: num is the numeric just copied
        if unsafe { pg_sys::numeric_is_nan(num) || pg_sys::numeric_is_inf(num) } {
            // SAFETY: numeric_out of a valid numeric returns a palloc'd C string
            let text = unsafe {
                std::ffi::CStr::from_ptr(
                    pg_sys::OidFunctionCall1Coll(
                        pg_sys::Oid::from(pg_sys::F_NUMERIC_OUT),
                        pg_sys::InvalidOid,
                        datum,
                    )
                    .cast_mut_ptr::<c_char>(),
                )
            };
            let bytes = text.to_bytes();
            self.push(key, string_value(bytes.as_ptr(), bytes.len()));
            return;
        }
        self.push(
            key,
            scalar(
                pg_sys::jbvType::jbvNumeric,
                pg_sys::JsonbValue__bindgen_ty_1 { numeric: num },
            ),
        );
    }

    /// The jsonb: keys sorted and made unique as jsonb does it (the last value of a key wins).
    pub fn finish(mut self) -> Jsonb {
        // SAFETY: END_OBJECT closes the object opened by `new` and returns it; JsonbValueToJsonb
        // serializes it into a fresh varlena.
        unsafe {
            let v = pg_sys::pushJsonbValue(
                &mut self.state,
                pg_sys::JsonbIteratorToken::WJB_END_OBJECT,
                ptr::null_mut(),
            );
            Jsonb(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(v)))
        }
    }
}

impl Default for Object {
    fn default() -> Self {
        Self::new()
    }
}
