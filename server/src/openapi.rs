//! The OpenAPI 3.1 document of the native API, generated from the handlers' annotations
//! (`routes::native`) and the wire types' schemas (`common`, feature `openapi`), so it
//! cannot drift from the code. Served at `GET /v1/openapi.json`.

use std::sync::OnceLock;

use common::api::Problem;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{KnownFormat, OpenApi as Document, RefOr, Required, SchemaFormat};
use utoipa::{OpenApi, PartialSchema};

use crate::routes::native;

/// The annotated routes and schemas; see [`document`] for what is added to them.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "upload-server native API",
        description = "Resumable, verified file uploads: create an upload, send its chunks \
                       in any order, complete it (the whole-file SHA-256 is checked), \
                       download it. Errors are RFC 9457 problem documents.",
        version = "1"
    ),
    paths(
        native::capabilities,
        native::create,
        native::list,
        native::status,
        native::put_chunk,
        native::put_chunk_run,
        native::complete,
        native::cancel,
        native::content_url,
        native::content
    ),
    security((), ("bearer" = [])),
    tags((name = "uploads", description = "The native upload API v1."))
)]
struct ApiDoc;

/// Answers any route may give, whatever the route: authentication, the checks of an
/// anonymous server (see `crate::site`), rate limits, an unavailable or failing storage.
const COMMON_ERRORS: [(&str, &str); 6] = [
    (
        "401",
        "No valid bearer token (when the server requires authentication).",
    ),
    (
        "403",
        "Without authentication: a state change sent by a page of another site.",
    ),
    (
        "421",
        "Without authentication: a Host the server does not answer for (--allowed-host).",
    ),
    ("429", "Too many requests or open uploads; see Retry-After."),
    ("500", "The server failed; the cause is in its log."),
    (
        "503",
        "Shutting down, or the storage is unavailable; see Retry-After.",
    ),
];

/// The document, built once.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Document {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            for (status, description) in COMMON_ERRORS {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(problem_response(description)));
            }
            let takes_json = op
                .request_body
                .as_ref()
                .is_some_and(|b| b.content.contains_key(mime::APPLICATION_JSON.essence_str()));
            if takes_json {
                op.responses
                    .responses
                    .entry("415".to_string())
                    .or_insert_with(|| {
                        RefOr::T(problem_response(
                            "A body not sent as JSON (Content-Type: application/json).",
                        ))
                    });
            }
            // Raw bytes, not a JSON array of numbers.
            if let Some(body) = &mut op.request_body {
                if let Some(content) = body
                    .content
                    .get_mut(mime::APPLICATION_OCTET_STREAM.as_ref())
                {
                    content.schema = Some(binary());
                    body.required = Some(Required::True);
                }
            }
            for resp in op.responses.responses.values_mut() {
                if let RefOr::T(resp) = resp {
                    if let Some(content) = resp
                        .content
                        .get_mut(mime::APPLICATION_OCTET_STREAM.as_ref())
                    {
                        content.schema = Some(binary());
                    }
                }
            }
        }
    }
    doc
}

/// A problem document answer.
fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            common::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Problem::schema()))
                .build(),
        )
        .build()
}

/// Any bytes.
fn binary() -> RefOr<utoipa::openapi::schema::Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .into()
}

#[cfg(test)]
mod tests {
    use super::document;

    #[test]
    fn documents_every_native_route_with_its_errors() {
        let doc = serde_json::to_value(document()).expect("serializable");
        assert_eq!(doc["openapi"], "3.1.0");
        let chunk = &doc["paths"]["/v1/uploads/{id}/chunks/{index}"]["put"];
        assert_eq!(
            chunk["requestBody"]["content"]["application/octet-stream"]["schema"]["format"],
            "binary"
        );
        for status in ["201", "400", "401", "404", "409", "500", "503"] {
            assert!(chunk["responses"][status].is_object(), "{status}");
        }
        let create = &doc["paths"]["/v1/uploads"]["post"];
        assert!(create["responses"]["415"].is_object(), "a JSON body's type");
        assert!(chunk["responses"]["400"]["content"]["application/problem+json"].is_object());
        assert!(doc["components"]["schemas"]["UploadStatus"].is_object());
    }
}
