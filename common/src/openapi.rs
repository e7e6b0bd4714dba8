//! OpenAPI schemas of the wire types whose JSON form is not their Rust shape (feature
//! `openapi`): ids are canonical UUID strings and digests 64 lowercase hex characters,
//! both serialized through `String`, which `utoipa`'s derive cannot see.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use utoipa::{PartialSchema, ToSchema};

use crate::{Sha256Digest, UploadId};

impl PartialSchema for UploadId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("uuid".into())))
            .pattern(Some(
                "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            ))
            .description(Some("An upload id: a lowercase hyphenated UUID."))
            .into()
    }
}

impl ToSchema for UploadId {}

impl PartialSchema for Sha256Digest {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9a-f]{64}$"))
            .description(Some(
                "A SHA-256 digest as 64 lowercase hexadecimal characters.",
            ))
            .into()
    }
}

impl ToSchema for Sha256Digest {}

/// Schema of [`crate::ranges::IndexRanges`]: inclusive `[first, last]` pairs of chunk
/// indexes.
pub struct IndexRangesSchema;

impl PartialSchema for IndexRangesSchema {
    fn schema() -> RefOr<Schema> {
        let index = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0));
        let pair = ArrayBuilder::new()
            .items(index)
            .min_items(Some(2))
            .max_items(Some(2));
        ArrayBuilder::new()
            .items(pair)
            .description(Some(
                "Chunk indexes as sorted, disjoint inclusive [first, last] ranges.",
            ))
            .into()
    }
}

impl ToSchema for IndexRangesSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "IndexRanges".into()
    }
}
