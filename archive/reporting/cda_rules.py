"""The Ministry of Health's checks of the Referto di Radiologia, as the project's own code.

The FSE 2.0 gateway validates a radiology report (RAD) with the schematron
published in the Ministry's ``it-fse-catalogs`` repository
(``schematronFSE_RAD_v4.1.sch``, "Referto di Radiologia 1.1"). Every rule of
it that can concern what :func:`archive.reporting.cda.report_cda` writes is
encoded here as XPath 1.0 (lxml) with the Ministry's rule id, so that a
document is refused here, with the same id, before the gateway refuses it.
The rules were re-expressed, not copied: XPath 2.0's ``matches()`` is EXSLT's
``re:test()``, and ERRORE-53 compares the first 14 digits of the two times as
numbers (XPath 1.0 has no string ordering).

Left out: ERRORE-b19 to ERRORE-b64, the entries of the "Storia clinica"
(anamnesis, allergies) and "Precedenti esami eseguiti" sections, which the
archive never writes (it has no coded anamnesis to give). The schematron's
warnings (``report``: W001, W005) are :func:`rule_warnings`, not problems.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree


@dataclass(frozen=True)
class CdaProblem:
    """One reason a document fails: ``rule`` is "XSD" or the Ministry's rule id ("ERRORE-29")."""

    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


NSMAP = {
    "hl7": "urn:hl7-org:v3",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "re": "http://exslt.org/regular-expressions",
}

DOC = "/hl7:ClinicalDocument"
PR = "hl7:recordTarget/hl7:patientRole"
PAT = f"{PR}/hl7:patient"
BODY = "/hl7:ClinicalDocument/hl7:component/hl7:structuredBody"
CF = "2.16.840.1.113883.2.9.4.3.2"
LOINC = "2.16.840.1.113883.6.1"


@dataclass(frozen=True)
class Rule:
    """One assertion: for every node ``context`` selects, ``test`` must be true."""

    id: str
    context: str
    test: str
    message: str
    warning: bool = False


def _ids(root: str) -> str:
    return f"count({PR}/hl7:id[@root='{root}'])"


# Regional patient identifiers (2.16.840.1.113883.2.9.2.<region>.4.1[.1]): ERRORE-10a accepts them alone.
_REGIONS = (10, 20, 30, 41, 42, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200)
_REGIONAL_ASSISTITO = " or ".join(f"{_ids(f'2.16.840.1.113883.2.9.2.{r}.4.1.1')}=1" for r in _REGIONS)
_REGIONAL_ANY = " or ".join(
    f"{_ids(f'2.16.840.1.113883.2.9.2.{r}.4.1.1')}=1 or {_ids(f'2.16.840.1.113883.2.9.2.{r}.4.1')}=1" for r in _REGIONS
)
_ALL_IDS = f"count({PR}/hl7:id[@root or @nullFlavor])"


def _sec(code: str) -> str:
    return f"hl7:section[hl7:code[@code='{code}']]"


def _addr_complete(path: str) -> str:
    n = f"count({path})"
    return (
        f"{n}=0 or (count({path}/hl7:country)={n} and count({path}/hl7:city)={n} "
        f"and count({path}/hl7:streetAddressLine)={n})"
    )


def _name_given_family(path: str) -> str:
    return f"count({path}/hl7:given)=1 and count({path}/hl7:family)=1"


LA = "hl7:legalAuthenticator"
LA_NAME = f"{LA}/hl7:assignedEntity/hl7:assignedPerson/hl7:name"
DE = "hl7:dataEnterer"
DE_NAME = f"{DE}/hl7:assignedEntity/hl7:assignedPerson/hl7:name"
RESP_PERSON = "hl7:componentOf/hl7:encompassingEncounter/hl7:responsibleParty/hl7:assignedEntity/hl7:assignedPerson"
SPO = "hl7:componentOf/hl7:encompassingEncounter/hl7:location/hl7:healthCareFacility/hl7:serviceProviderOrganization"
CUST_ORG = "hl7:custodian/hl7:assignedCustodian/hl7:representedCustodianOrganization"
VN = "hl7:versionNumber/@value"

_SECTION_CODES = (
    "121181",
    "18785-6",
    "11329-0",
    "55114-3",
    "55111-9",
    "18782-3",
    "55110-1",
    "55107-7",
    "55109-3",
    "18783-1",
)

RULES: tuple[Rule, ...] = (
    # --- header ---------------------------------------------------------------
    Rule("ERRORE-1", DOC, "count(hl7:realmCode)>=1", "manca realmCode"),
    Rule("ERRORE-2", DOC, "count(hl7:realmCode[@code='IT'])=1", "realmCode deve valere IT"),
    Rule("ERRORE-3", DOC, "count(hl7:templateId)>=1", "manca templateId"),
    Rule(
        "ERRORE-4",
        DOC,
        "count(hl7:templateId[@root='2.16.840.1.113883.2.9.10.1.7.1'])=1 and "
        "count(hl7:templateId[@root='2.16.840.1.113883.2.9.10.1.7.1']/@extension)=1",
        "serve il templateId nazionale 2.16.840.1.113883.2.9.10.1.7.1 con la versione in extension",
    ),
    Rule(
        "ERRORE-5",
        DOC,
        f"count(hl7:code[@code='68604-8'][@codeSystem='{LOINC}'])=1",
        "code deve essere 68604-8 (LOINC)",
    ),
    Rule(
        "W001",
        DOC,
        "not(count(hl7:code[@codeSystemName='LOINC'])=1) or not(count(hl7:code[@displayName='Referto Radiologico'])=1 "
        "or count(hl7:code[@displayName='REFERTO RADIOLOGICO'])=1 or count(hl7:code[@displayName='Referto radiologico'])=1)",
        "si raccomandano codeSystemName LOINC e displayName Referto Radiologico",
        warning=True,
    ),
    Rule(
        "ERRORE-6",
        DOC,
        "count(hl7:confidentialityCode[@code='N' or @code='R' or @code='V'][@codeSystem='2.16.840.1.113883.5.25'])=1",
        "confidentialityCode deve essere N, R o V (2.16.840.1.113883.5.25)",
    ),
    Rule("ERRORE-7", DOC, "count(hl7:languageCode)=1", "serve un solo languageCode"),
    Rule(
        "ERRORE-8",
        DOC,
        f"string(number({VN}))='NaN' or ({VN}='1' and count(hl7:setId)=0) or "
        f"({VN}=1 and hl7:id/@root=hl7:setId/@root and hl7:id/@extension=hl7:setId/@extension) or "
        f"({VN}!='1' and hl7:id/@root=hl7:setId/@root and hl7:id/@extension!=hl7:setId/@extension) or "
        "(hl7:id/@root!=hl7:setId/@root)",
        "id e setId coincidono solo nella prima versione del documento",
    ),
    Rule(
        "ERRORE-9",
        DOC,
        f"string(number({VN}))='NaN' or {VN}=1 or ({VN}>1 and count(hl7:relatedDocument)=1)",
        "una versione successiva alla prima deve avere un relatedDocument",
    ),
    Rule("ERRORE-10", DOC, "count(hl7:recordTarget)=1", "serve un solo recordTarget"),
    Rule(
        "ERRORE-10a",
        DOC,
        f"({_ids(CF)}=1 and {_ALL_IDS}>=2) or "
        f"({_ids('2.16.840.1.113883.2.9.4.3.7')}=1 and {_ALL_IDS}>=3) or "
        f"{_ids('2.16.840.1.113883.2.9.4.3.3')}=1 or "
        f"({_ids('2.16.840.1.113883.2.9.4.3.18')}=1 and {_ALL_IDS}>=2) or "
        f"({_ids('2.16.840.1.113883.2.9.4.3.17')}=1 and {_ALL_IDS}>=2) or "
        f"({_ids('2.16.840.1.113883.2.9.4.3.15')}=1 and {_ALL_IDS}>=2) or {_REGIONAL_ANY}",
        "il paziente va identificato con un identificativo nazionale (codice fiscale più l'identificativo "
        "del PACS, TEAM, ENI, STP, ANA) o regionale",
    ),
    Rule(
        "ERRORE-10b",
        DOC,
        f"({_ids('2.16.840.1.113883.2.9.4.3.7')}=0 or {_ids('2.16.840.1.113883.2.9.4.3.3')}=1) and "
        f"({_ids('2.16.840.1.113883.2.9.4.3.3')}=0 or {_ids('2.16.840.1.113883.2.9.4.3.7')}=1)",
        "un assistito da istituzione estera ha sia il numero della tessera TEAM sia quello personale",
    ),
    Rule(
        "ERRORE-10c",
        DOC,
        f"({_ids(CF)}=0 and {_ids('2.16.840.1.113883.2.9.4.3.7')}=0 and {_ids('2.16.840.1.113883.2.9.4.3.3')}=0 and "
        f"{_ids('2.16.840.1.113883.2.9.4.3.18')}=0 and {_ids('2.16.840.1.113883.2.9.4.3.15')}=0) or "
        f"not({_REGIONAL_ASSISTITO})",
        "l'identificativo regionale STP non si accompagna a un identificativo nazionale",
    ),
    Rule(
        "ERRORE-11",
        DOC,
        _addr_complete(f"{PR}/hl7:addr"),
        "l'indirizzo del paziente ha country, city e streetAddressLine",
    ),
    Rule("ERRORE-12", DOC, f"count({PAT})=1", "patientRole deve contenere patient"),
    Rule("ERRORE-13", DOC, f"count({PAT})=0 or count({PAT}/hl7:name)=1", "patient deve avere name"),
    Rule(
        "ERRORE-14",
        DOC,
        f"count({PAT})=0 or ({_name_given_family(f'{PAT}/hl7:name')})",
        "il nome del paziente ha given e family",
    ),
    Rule(
        "ERRORE-15",
        DOC,
        f"count({PAT})=0 or count({PAT}/hl7:administrativeGenderCode)=1",
        "patient deve avere administrativeGenderCode",
    ),
    Rule(
        "ERRORE-16",
        DOC,
        f"count({PAT})=0 or {PAT}/hl7:administrativeGenderCode/@codeSystem='2.16.840.1.113883.5.1'",
        "administrativeGenderCode usa il codeSystem 2.16.840.1.113883.5.1",
    ),
    Rule("ERRORE-17", DOC, f"count({PAT})=0 or count({PAT}/hl7:birthTime)=1", "patient deve avere birthTime"),
    Rule(
        "ERRORE-18",
        DOC,
        f"count({PAT}/hl7:birthplace)=0 or count({PAT}/hl7:birthplace/hl7:place/hl7:addr)=1",
        "birthplace deve contenere place/addr",
    ),
    Rule("ERRORE-23", DOC, f"count({DE})=0 or count({DE}/hl7:time)>=1", "dataEnterer deve avere time"),
    Rule(
        "ERRORE-24",
        DOC,
        f"count({DE})=0 or count({DE}/hl7:assignedEntity/hl7:id[@root='{CF}'])=1",
        "dataEnterer va identificato con il codice fiscale",
    ),
    Rule(
        "ERRORE-25",
        DOC,
        f"count({DE})=0 or (count({DE}/hl7:assignedEntity/hl7:assignedPerson)=1 and count({DE_NAME})=1)",
        "dataEnterer deve avere assignedPerson/name",
    ),
    Rule(
        "ERRORE-26",
        DOC,
        f"count({DE})=0 or (count({DE_NAME}/hl7:family)=1 and count({DE_NAME}/hl7:given)=1)",
        "il nome di dataEnterer ha given e family",
    ),
    Rule("ERRORE-27", DOC, f"count({CUST_ORG}/hl7:name)=1", "il custode deve avere name"),
    Rule(
        "ERRORE-28",
        DOC,
        _addr_complete(f"{CUST_ORG}/hl7:addr"),
        "l'indirizzo del custode ha country, city e streetAddressLine",
    ),
    Rule("ERRORE-29", DOC, f"count({LA})=1", "legalAuthenticator è obbligatorio"),
    Rule(
        "ERRORE-30", DOC, f"count({LA})=0 or count({LA}/hl7:signatureCode[@code='S'])=1", "signatureCode deve valere S"
    ),
    Rule(
        "ERRORE-31",
        DOC,
        f"count({LA})=0 or count({LA}/hl7:assignedEntity/hl7:id[@root='{CF}'])=1",
        "chi firma va identificato con il codice fiscale",
    ),
    Rule("ERRORE-32", DOC, f"count({LA})=0 or count({LA_NAME})=1", "chi firma deve avere assignedPerson/name"),
    Rule(
        "ERRORE-33",
        DOC,
        f"count({LA})=0 or (count({LA_NAME}/hl7:family)=1 and count({LA_NAME}/hl7:given)=1)",
        "il nome di chi firma ha given e family",
    ),
    Rule("ERRORE-38", DOC, "count(hl7:inFulfillmentOf)>=1", "serve almeno un inFulfillmentOf"),
    Rule(
        "ERRORE-42",
        DOC,
        f"count({RESP_PERSON})=0 or count({RESP_PERSON}/hl7:name)=1",
        "il responsabile dell'incontro deve avere name",
    ),
    Rule(
        "ERRORE-43",
        DOC,
        f"count({RESP_PERSON})=0 or ({_name_given_family(f'{RESP_PERSON}/hl7:name')})",
        "il nome del responsabile dell'incontro ha given e family",
    ),
    Rule("ERRORE-44", DOC, f"count({SPO})=0 or count({SPO}/hl7:id)=1", "serviceProviderOrganization deve avere un id"),
    # --- author, participant, order, service event ------------------------------------
    Rule(
        "ERRORE-19",
        f"{DOC}/hl7:author",
        f"count(hl7:assignedAuthor/hl7:id[@root='{CF}'])=1",
        "l'autore va identificato con il codice fiscale",
    ),
    Rule(
        "ERRORE-20", f"{DOC}/hl7:author", "count(hl7:assignedAuthor/hl7:telecom)>=1", "l'autore deve avere un telecom"
    ),
    Rule(
        "ERRORE-21",
        f"{DOC}/hl7:author",
        "count(hl7:assignedAuthor/hl7:assignedPerson/hl7:name)=1",
        "l'autore deve avere assignedPerson/name",
    ),
    Rule(
        "ERRORE-22",
        f"{DOC}/hl7:author",
        "count(hl7:assignedAuthor/hl7:assignedPerson/hl7:name)=0 or "
        f"({_name_given_family('hl7:assignedAuthor/hl7:assignedPerson/hl7:name')})",
        "il nome dell'autore ha given e family",
    ),
    Rule(
        "ERRORE-34", f"{DOC}/hl7:participant", "count(hl7:associatedEntity/hl7:id)>=1", "il partecipante deve avere id"
    ),
    Rule(
        "ERRORE-35",
        f"{DOC}/hl7:participant",
        _addr_complete("hl7:associatedEntity/hl7:addr"),
        "l'indirizzo del partecipante ha country, city e streetAddressLine",
    ),
    Rule(
        "ERRORE-36",
        f"{DOC}/hl7:participant",
        "count(hl7:associatedEntity/hl7:associatedPerson)=0 or count(hl7:associatedEntity/hl7:associatedPerson/hl7:name)=1",
        "il partecipante deve avere name",
    ),
    Rule(
        "ERRORE-37",
        f"{DOC}/hl7:participant",
        "count(hl7:associatedEntity/hl7:associatedPerson)=0 or "
        f"({_name_given_family('hl7:associatedEntity/hl7:associatedPerson/hl7:name')})",
        "il nome del partecipante ha given e family",
    ),
    Rule(
        "ERRORE-39",
        f"{DOC}/hl7:inFulfillmentOf",
        "count(hl7:order/hl7:priorityCode)=0 or count(hl7:order/hl7:priorityCode[@codeSystem='2.16.840.1.113883.5.7'])=1",
        "priorityCode usa il codeSystem 2.16.840.1.113883.5.7",
    ),
    Rule(
        "ERRORE-39a",
        f"{DOC}/hl7:documentationOf",
        "count(hl7:serviceEvent/hl7:performer)=0 or count(hl7:serviceEvent/hl7:performer[@typeCode!='PPRF'])=1",
        "il performer di serviceEvent è PRF o SPRF",
    ),
    Rule(
        "ERRORE-40",
        f"{DOC}/hl7:documentationOf",
        "count(hl7:serviceEvent)=0 or count(hl7:serviceEvent/hl7:code[@code='PROG' or @code='DIR' "
        "or @code='RAD_PROG' or @code='RAD_DIR'])=1",
        "serviceEvent/code deve essere PROG, DIR, RAD_PROG o RAD_DIR",
    ),
    Rule(
        "ERRORE-41",
        f"{DOC}/hl7:documentationOf",
        "count(hl7:serviceEvent)=0 or count(hl7:serviceEvent/hl7:code[@codeSystem='2.16.840.1.113883.2.9.5.1.4'])=1",
        "serviceEvent/code usa il codeSystem 2.16.840.1.113883.2.9.5.1.4",
    ),
    # --- everywhere ---------------------------------------------------------------
    Rule("ERRORE-45", "//hl7:telecom", "count(@use)=1", "ogni telecom ha l'attributo use"),
    Rule(
        "ERRORE-45a",
        "//*[contains(local-name(), 'Organization')][hl7:telecom]",
        "not(hl7:telecom/@use='H' or hl7:telecom/@use='HP' or hl7:telecom/@use='HV')",
        "il telecom di un'organizzazione non è domestico (H, HP, HV)",
    ),
    Rule(
        "ERRORE-46",
        f"//hl7:id[@root='{CF}']",
        "re:test(@extension, '[A-Z0-9]{16}') and string-length(@extension)=16",
        "un codice fiscale ha 16 caratteri [A-Z0-9]",
    ),
    Rule(
        "ERRORE-47",
        "//hl7:observation",
        "count(@classCode)=0 or @classCode='OBS' or @classCode='DGIMG'",
        "observation/@classCode è OBS o DGIMG",
    ),
    Rule("ERRORE-48", "//hl7:observation", "@moodCode='EVN'", "observation/@moodCode è EVN"),
    Rule("ERRORE-49", "//hl7:act", "@moodCode='EVN'", "act/@moodCode è EVN"),
    Rule("ERRORE-50", "//hl7:act", "@classCode='ACT'", "act/@classCode è ACT"),
    Rule(
        "ERRORE-51",
        "//hl7:name[contains(local-name(..), 'Organization') or parent::hl7:location]",
        "count(hl7:delimiter)=0 and count(hl7:prefix)=0 and count(hl7:suffix)=0",
        "il nome di un'organizzazione non ha delimiter, prefix, suffix",
    ),
    Rule("ERRORE-52", "//hl7:name", "count(hl7:delimiter)=0", "un nome non ha delimiter"),
    Rule(
        "ERRORE-53",
        "//hl7:effectiveTime[hl7:low/@value]",
        "count(hl7:high/@value)=0 or number(substring(concat(hl7:high/@value, '00000000000000'), 1, 14)) >= "
        "number(substring(concat(hl7:low/@value, '00000000000000'), 1, 14))",
        "effectiveTime/high non precede effectiveTime/low",
    ),
    Rule(
        "ERRORE-54",
        "//*[contains(local-name(), 'Organization')]/hl7:addr[@use='H' or @use='HP' or @use='HV']",
        "false()",
        "l'indirizzo di un'organizzazione non è domestico (H, HP, HV)",
    ),
    # --- body: the sections -----------------------------------------------------------
    Rule(
        "ERRORE-b1",
        BODY,
        f"count(hl7:component/hl7:section/hl7:code[@code='55111-9'][@codeSystem='{LOINC}'])=1",
        "manca la sezione Esame eseguito (55111-9)",
    ),
    Rule("ERRORE-b2", BODY, f"count(hl7:component/{_sec('55111-9')}/hl7:text)=1", "Esame eseguito: manca text"),
    Rule("ERRORE-b3", BODY, f"count(hl7:component/{_sec('55111-9')}/hl7:entry)>=1", "Esame eseguito: manca entry"),
    Rule(
        "ERRORE-b4",
        BODY,
        f"count(hl7:component/hl7:section/hl7:code[@code='18782-3'][@codeSystem='{LOINC}'])=1",
        "manca la sezione Referto (18782-3)",
    ),
    Rule("ERRORE-b5", BODY, f"count(hl7:component/{_sec('18782-3')}/hl7:text)=1", "Referto: manca text"),
    Rule(
        "ERRORE-b6",
        f"{BODY}/hl7:component/hl7:section",
        " or ".join(f"count(hl7:code[@code='{c}'])=1" for c in _SECTION_CODES),
        "codice di sezione non previsto dalla guida",
    ),
    Rule(
        "ERRORE-b7",
        f"{BODY}/hl7:component",
        f"count({_sec('121181')})=0 or count({_sec('121181')}/hl7:entry/hl7:act)=1",
        "DICOM Object Catalog: serve una entry act",
    ),
    Rule(
        "ERRORE-b8",
        f"{BODY}/hl7:component",
        f"count({_sec('18785-6')})=0 or count({_sec('18785-6')}/hl7:text)=1",
        "Quesito diagnostico: manca text",
    ),
    Rule(
        "ERRORE-b9",
        f"{BODY}/hl7:component",
        f"count({_sec('18785-6')}/hl7:entry)=0 or count({_sec('18785-6')}/hl7:entry/hl7:observation)=1",
        "Quesito diagnostico: la entry è una observation",
    ),
    Rule(
        "ERRORE-b10",
        f"{BODY}/hl7:component",
        f"count({_sec('18785-6')}/hl7:entry)=0 or "
        f"count({_sec('18785-6')}/hl7:entry/hl7:observation/hl7:code[@code='29308-4'][@codeSystem='{LOINC}'])=1",
        "Quesito diagnostico: observation/code è 29308-4 (LOINC)",
    ),
    Rule(
        "ERRORE-b11",
        f"{BODY}/hl7:component",
        f"count({_sec('18785-6')}/hl7:entry)=0 or "
        f"count({_sec('18785-6')}/hl7:entry/hl7:observation/hl7:value[@codeSystem='2.16.840.1.113883.6.103'])=1",
        "Quesito diagnostico: observation/value in ICD-9-CM",
    ),
    Rule(
        "ERRORE-b12",
        f"{BODY}/hl7:component",
        f"count({_sec('11329-0')})=0 or count({_sec('11329-0')}/hl7:text)=1",
        "Storia clinica: manca text",
    ),
    Rule(
        "ERRORE-b13",
        f"{BODY}/hl7:component",
        f"count({_sec('55114-3')})=0 or count({_sec('55114-3')}/hl7:text)=1",
        "Precedenti esami eseguiti: manca text",
    ),
    Rule(
        "ERRORE-b14",
        f"{BODY}/hl7:component",
        f"count({_sec('55110-1')})=0 or count({_sec('55110-1')}/hl7:text)=1",
        "Conclusioni: manca text",
    ),
    Rule(
        "ERRORE-b15",
        f"{BODY}/hl7:component",
        f"count({_sec('55107-7')})=0 or count({_sec('55107-7')}/hl7:text)=1",
        "Informazioni aggiuntive: manca text",
    ),
    Rule(
        "ERRORE-b16",
        f"{BODY}/hl7:component",
        f"count({_sec('55109-3')})=0 or count({_sec('55109-3')}/hl7:text)=1",
        "Complicanze: manca text",
    ),
    Rule(
        "ERRORE-b17",
        f"{BODY}/hl7:component",
        f"count({_sec('55109-3')}/hl7:entry)=0 or count({_sec('55109-3')}/hl7:entry/hl7:observation)=1",
        "Complicanze: la entry è una observation",
    ),
    Rule(
        "ERRORE-b18",
        f"{BODY}/hl7:component",
        f"count({_sec('18783-1')})=0 or count({_sec('18783-1')}/hl7:text)=1",
        "Suggerimenti per il medico prescrittore: manca text",
    ),
    Rule(
        "ERRORE-b65",
        f"{BODY}/hl7:component/{_sec('55111-9')}/hl7:entry",
        "count(hl7:act)=1",
        "Esame eseguito: la entry è un act",
    ),
    Rule(
        "W005",
        f"{BODY}/hl7:component/{_sec('55111-9')}/hl7:entry",
        f"not(count(hl7:act/hl7:code[@codeSystem='{LOINC}'])=1) and "
        "not(count(hl7:act/hl7:code[@codeSystem='2.16.840.1.113883.6.103'])=1)",
        "Esame eseguito: si raccomanda act/code in LOINC o ICD-9-CM",
        warning=True,
    ),
    Rule(
        "ERRORE-b66",
        f"{BODY}/hl7:component/{_sec('55111-9')}/hl7:entry",
        "count(hl7:act/hl7:statusCode)=1",
        "Esame eseguito: act deve avere statusCode",
    ),
    Rule(
        "ERRORE-b67",
        f"{BODY}/hl7:component/{_sec('55111-9')}/hl7:entry",
        "count(hl7:act/hl7:effectiveTime)=1",
        "Esame eseguito: act deve avere effectiveTime",
    ),
)


def _failing(doc: etree._Element, rule: Rule) -> list[etree._Element]:
    tree = doc.getroottree()
    nodes = tree.xpath(rule.context, namespaces=NSMAP)
    assert isinstance(nodes, list)
    failed: list[etree._Element] = []
    for node in nodes:
        outcome = node.xpath(f"boolean({rule.test})", namespaces=NSMAP)
        # A schematron <report> fires when its test is true; an <assert> when it is false.
        if bool(outcome) == rule.warning:
            failed.append(node)
    return failed


def _results(doc: etree._Element, *, warnings: bool) -> list[CdaProblem]:
    problems: list[CdaProblem] = []
    for rule in RULES:
        if rule.warning != warnings:
            continue
        for node in _failing(doc, rule):
            where = node.getroottree().getpath(node)
            problems.append(CdaProblem(rule.id, f"{rule.message} ({where})"))
    return problems


def rule_problems(doc: etree._Element) -> list[CdaProblem]:
    """The errors (the schematron's ``assert``) that ``doc`` breaks, one per failing node."""
    return _results(doc, warnings=False)


def rule_warnings(doc: etree._Element) -> list[CdaProblem]:
    """The schematron's warnings (``report``: W001, W005) that ``doc`` triggers."""
    return _results(doc, warnings=True)
