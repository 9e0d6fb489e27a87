"""Logins (SOAP and OAuth username-password) and the sessions they hand out."""

from __future__ import annotations

import html
import logging
import re
import secrets
import time
from urllib.parse import parse_qs
from xml.dom import minidom

from crm_sync.local.errors import ApiError
from crm_sync.local.httpd import Response, json_response
from crm_sync.local.storage import Storage

log = logging.getLogger(__name__)


ORG_ID = "00D8c000000LoCaLEAX"


class Login(Storage):
    """SOAP/OAuth login, session tokens, and the bearer check every API call passes."""

    # -- login -----------------------------------------------------------------------------
    def _new_session(self) -> str:
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(48)}"
        with self._lock:
            self._sessions.add(token)
        return token

    def _login(self, path: str, body: bytes, headers: dict[str, str]) -> Response:
        if path.endswith("/services/oauth2/token"):
            return self._oauth(body, headers)
        m = re.search(r"/services/Soap/u/([\d.]+)/?$", path)
        version = m.group(1) if m else self.api_version
        username = password = None
        try:
            doc = minidom.parseString(body)
            u = doc.getElementsByTagNameNS("*", "username")
            p = doc.getElementsByTagNameNS("*", "password")
            username = u[0].firstChild.nodeValue if u and u[0].firstChild else None
            password = p[0].firstChild.nodeValue if p and p[0].firstChild else None
        except Exception:  # malformed XML is an INVALID_LOGIN like any other bad login
            username = None
        if username != self.username or password != self.password + self.security_token:
            log.info("local CRM rejected a SOAP login")
            fault = (
                '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
                "<faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, password, security token; or user locked out.</faultstring>"
                '<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>'
                "<sf:exceptionMessage>Invalid username, password, security token; or user locked out.</sf:exceptionMessage>"
                "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
            )
            return Response(500, fault.encode(), "text/xml; charset=utf-8")
        session = self._new_session()
        server_url = f"{self.base_url}/services/Soap/u/{version}/{ORG_ID[:15]}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{self.base_url}/services/Soap/m/{version}/{ORG_ID[:15]}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
            f"<serverUrl>{server_url}</serverUrl><sessionId>{session}</sessionId>"
            f"<userId>{self.integration_user_id}</userId><userInfo><organizationId>{ORG_ID}</organizationId>"
            f"<userName>{html.escape(self.username)}</userName><sessionSecondsValid>7200</sessionSecondsValid></userInfo>"
            "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return Response(200, xml.encode(), "text/xml; charset=utf-8")

    def _oauth(self, body: bytes, headers: dict[str, str]) -> Response:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        ok = False
        if grant == "password":
            ok = form.get("username") == self.username and form.get("password") in (
                self.password, self.password + self.security_token)
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            import jwt

            try:
                claims = jwt.decode(form.get("assertion", ""), options={"verify_signature": False})
                ok = claims.get("sub") == self.username and claims.get("iss") == self.consumer_key \
                    and float(claims.get("exp", 0)) > time.time()
            except jwt.PyJWTError:
                ok = False
        if not ok:
            return json_response(400, {"error": "invalid_grant", "error_description": "authentication failure"})
        return json_response(200, {
            "access_token": self._new_session(), "instance_url": self.base_url,
            "id": f"{self.base_url}/id/{ORG_ID}/{self.integration_user_id}", "token_type": "Bearer",
            "issued_at": str(int(time.time() * 1000)), "signature": secrets.token_urlsafe(32),
        })


    def _auth(self, headers: dict[str, str]) -> None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self._lock:
            valid = token in self._sessions
        if not valid:
            raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
