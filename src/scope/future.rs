crate::future::define_response_future!("RequireScope", crate::future::NoWait);
