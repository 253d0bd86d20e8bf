//! The OpenAPI document: assembled from the handlers' annotations, plus what every operation
//! shares (the bearer scheme and the problem+json errors any request can get).

use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};

use super::error::Problem;
use crate::domain::activity::{Activity, ActivityData, Change};
use crate::domain::{FieldError, Role};

#[derive(OpenApi)]
#[openapi(
    info(title = "TaskForge", description = "Team task tracker with a realtime activity stream. See /asyncapi.json for the socket."),
    security(("bearer" = [])),
    components(schemas(Problem, FieldError, Activity, ActivityData, Change, Role))
)]
struct Base;

pub fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}

/// Adds the bearer scheme and the errors every operation can answer.
pub fn finish(api: &mut utoipa::openapi::OpenApi) {
    if let Some(components) = api.components.as_mut() {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
    for item in api.paths.paths.values_mut() {
        if let Some(op) = item.post.as_mut() {
            add_idempotency_key(op);
        }
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            add_common_errors(op);
        }
    }
}

/// Every authenticated POST honours `Idempotency-Key` (`http::idempotency`).
fn add_idempotency_key(op: &mut Operation) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
    if public {
        return;
    }
    let parameter = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "A key of the client's choosing (1 to 255 visible ASCII characters, a UUID for \
             example): for 24 hours a retry with the same key and request gets the first answer \
             again (with `Idempotent-Replayed: true`), the same key with another request 422 \
             `idempotency_key_reused`, and while the first request runs 409 \
             `idempotency_key_in_use`. Should the server die after the first request's change \
             committed and before its answer was kept, a retry past 60 s is 409 \
             `idempotency_answer_lost` (the change is never made twice). Keys are per user.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255)),
        ))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(parameter);
    for (code, description) in [
        (
            "409",
            "the first request with this Idempotency-Key has not answered yet",
        ),
        (
            "422",
            "validation failed, or this Idempotency-Key was used with another request",
        ),
    ] {
        if !op.responses.responses.contains_key(code) {
            op.responses
                .responses
                .insert(code.to_owned(), problem(description).into());
        }
    }
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn add_common_errors(op: &mut Operation) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut codes = vec![
        ("400", "bad request (malformed JSON or id)"),
        ("500", "server error"),
    ];
    if !public {
        codes.push(("401", "missing, invalid or expired access token"));
        codes.push(("404", "no such resource, or not visible to the caller"));
        codes.push(("403", "the caller's role does not allow this"));
    }
    if has_body {
        codes.push(("413", "body over the size limit"));
        codes.push(("415", "body is not application/json"));
        codes.push(("422", "validation failed"));
    }
    if has_params {
        codes.push(("422", "validation failed"));
    }
    if public && has_body {
        codes.push(("401", "invalid credentials or token"));
        codes.push(("429", "rate limited"));
    }
    for (code, description) in codes {
        if !op.responses.responses.contains_key(code) {
            op.responses
                .responses
                .insert(code.to_owned(), problem(description).into());
        }
    }
}
